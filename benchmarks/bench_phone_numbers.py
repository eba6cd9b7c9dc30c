"""Benchmark: vectorised phone-number normalisation against the plain per-row libphonenumber loop.

Normalises 1,000,000 mixed values (``benchmarks/phone_corpus.py``: a contact table with repeats but
mostly distinct numbers, many regions and shapes, some junk), measures time and peak memory,
times the per-row loop (``reference_normalize``) on a 100,000-value sample and extrapolates it,
and checks that both give identical results on that sample.

Usage::

    .venv/bin/python benchmarks/bench_phone_numbers.py            # 1,000,000 values
    .venv/bin/python benchmarks/bench_phone_numbers.py --quick    # 100,000 values, 20,000 sample

Exit status 1 if the results differ (the speed target is reported, not enforced: timings
depend on the machine).
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from airflow_provider_smspartner.phone_numbers import normalize_phone_numbers  # noqa: E402
from benchmarks.phone_corpus import distinct_ratio, generate_corpus  # noqa: E402
from tests.phone_numbers.reference import reference_normalize  # noqa: E402

TARGET_RATIO = 20.0
MIB = 1024 * 1024


def _maxrss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 values and a 20,000 sample")
    parser.add_argument("-n", type=int, default=None, help="number of values (default 1,000,000)")
    parser.add_argument("--sample", type=int, default=None, help="baseline sample (default 100,000)")
    parser.add_argument("--repeat", type=int, default=None, help="fast-path runs, median kept (default 3)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--region", default="FR")
    args = parser.parse_args(argv)
    n = args.n or (100_000 if args.quick else 1_000_000)
    sample = min(n, args.sample or (20_000 if args.quick else 100_000))
    repeat = args.repeat or (1 if args.quick else 3)

    started = time.perf_counter()
    values = generate_corpus(n, seed=args.seed)
    print(
        f"corpus: {n:,} values (seed {args.seed}, {distinct_ratio(values):.1%} distinct), "
        f"generated in {time.perf_counter() - started:.1f} s"
    )

    # Warm-up on a small slice so that neither side pays for libphonenumber's lazy metadata
    # loading or first-call setup.
    warm = values[: min(n, 20_000)]
    normalize_phone_numbers(warm, args.region)
    reference_normalize(warm[:2_000], args.region)

    # The first full-size run also pays for growing the process's memory (page faults); it is
    # reported on its own, and the timed runs that follow measure the steady state.
    gc.collect()
    rss_before = _maxrss_mib()
    started = time.perf_counter()
    result = normalize_phone_numbers(values, args.region)
    first_seconds = time.perf_counter() - started
    rss_delta = _maxrss_mib() - rss_before
    timings = []
    for _ in range(repeat):
        del result
        gc.collect()
        started = time.perf_counter()
        result = normalize_phone_numbers(values, args.region)
        timings.append(time.perf_counter() - started)
    fast_seconds = statistics.median(timings)
    runs = f"median of {repeat} runs" if repeat > 1 else "1 run"
    print(
        f"fast path: {n:,} values in {fast_seconds:.2f} s "
        f"({fast_seconds / n * 1e6:.2f} us/value, {runs}: {', '.join(f'{t:.2f}' for t in timings)} s; "
        f"first, cold run: {first_seconds:.2f} s)"
    )

    # Peak memory of one more run: Python + numpy allocations (tracemalloc), Arrow's own pool.
    del result
    gc.collect()
    pool = pa.default_memory_pool()
    arrow_before = pool.bytes_allocated()
    tracemalloc.start()
    result = normalize_phone_numbers(values, args.region)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    arrow_peak = max(pool.max_memory() - arrow_before, 0) if pool.max_memory() is not None else 0
    print(
        f"peak memory: {traced_peak / MIB:.0f} MiB (tracemalloc: Python + numpy), "
        f"Arrow pool high-water mark {arrow_peak / MIB:.0f} MiB, "
        f"ru_maxrss delta {rss_delta:.0f} MiB"
    )

    head = values[:sample]
    started = time.perf_counter()
    expected = reference_normalize(head, args.region)
    baseline_sample = time.perf_counter() - started
    baseline = baseline_sample * n / sample
    print(
        f"baseline (per-row loop, {sample:,} sample, extrapolated): {baseline:.1f} s "
        f"({baseline_sample:.2f} s measured, {baseline_sample / sample * 1e6:.1f} us/value)"
    )
    ratio = baseline / fast_seconds
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    if n < 1_000_000:
        verdict += ", but the target is for 1,000,000 values: fixed costs weigh more on small runs"
    print(
        f"ratio: {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x: {verdict}; "
        f"{baseline / first_seconds:.1f}x against the first, cold run)"
    )

    try:
        pd.testing.assert_frame_equal(result.iloc[:sample], expected)
        identical = True
    except AssertionError as exc:
        identical = False
        print(exc)
    print(f"results identical on sample: {'yes' if identical else 'NO'}")
    counts = result["reason"].fillna("valid").value_counts()
    print("outcomes: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
