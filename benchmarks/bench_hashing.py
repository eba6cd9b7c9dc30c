"""Benchmark: keyed hashing of phone numbers (``hash_phone_numbers``) against its parts and baselines.

On 1,000,000 mixed values (``benchmarks/phone_corpus.py``, the corpus of bench_phone_numbers.py),
the median of ``--repeat`` runs of:

* ``hash_phone_numbers`` (normalisation + hashing), target < 3.5 s;
* ``hash_e164`` alone on the normalised column (the hashing of the E.164 texts), target < 1.5 s;
* ``normalize_phone_numbers`` alone (the baseline: what hashing adds to it);
* the naive per-value ``hmac.new(key, e164.encode(), sha256).hexdigest()`` on the same E.164
  texts, and ``hmac.new(key, digestmod=sha256).copy()`` per value (the second and third
  baselines), whose hashes must equal the provider's.

Usage::

    .venv/bin/python benchmarks/bench_hashing.py              # 1,000,000 values, median of 5
    .venv/bin/python benchmarks/bench_hashing.py --quick      # 100,000 values, median of 3

Exit status 1 if the hashes differ from the naive loop's (the targets are reported, not enforced:
timings depend on the machine).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import hmac
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from airflow_provider_smspartner.phone_numbers import hash_phone_numbers, normalize_phone_numbers  # noqa: E402
from airflow_provider_smspartner.phone_numbers.hashing import hash_e164  # noqa: E402
from benchmarks.phone_corpus import distinct_ratio, generate_corpus  # noqa: E402

TOTAL_TARGET = 3.5
HASHING_TARGET = 1.5
#: A benchmark key: 40 characters, non-ASCII included, as a real secret may be.
KEY = "bench-hash-key-é-0123456789abcdefghijklm"


def _median(run: Callable[[], Any], repeat: int) -> tuple[float, list[float], Any]:
    timings = []
    result = None
    for _ in range(repeat):
        del result
        gc.collect()
        started = time.perf_counter()
        result = run()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), timings, result


def _naive(texts: list[str | None], key: bytes) -> list[str | None]:
    """What a user would write first: one HMAC object per value."""
    return [
        None if text is None else hmac.new(key, text.encode(), hashlib.sha256).hexdigest() for text in texts
    ]


def _hmac_copy(texts: list[str | None], key: bytes) -> list[str | None]:
    """The key state computed once, the HMAC object copied per value."""
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    out: list[str | None] = []
    for text in texts:
        if text is None:
            out.append(None)
            continue
        state = keyed.copy()
        state.update(text.encode())
        out.append(state.hexdigest())
    return out


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux ``/proc/stat``; else None)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _line(label: str, seconds: float, timings: list[float], n: int, unit: str = "value") -> str:
    runs = ", ".join(f"{t:.2f}" for t in timings)
    return f"{label}: {seconds:.2f} s ({seconds / n * 1e6:.2f} us/{unit}; runs {runs} s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 values, median of 3")
    parser.add_argument("-n", type=int, default=None, help="number of values (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per measure, median kept (default 5)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--region", default="FR")
    args = parser.parse_args(argv)
    n = args.n or (100_000 if args.quick else 1_000_000)
    repeat = args.repeat or (3 if args.quick else 5)
    key = KEY.encode()

    started = time.perf_counter()
    values = generate_corpus(n, seed=args.seed)
    print(
        f"corpus: {n:,} values (seed {args.seed}, {distinct_ratio(values):.1%} distinct), "
        f"generated in {time.perf_counter() - started:.1f} s; median of {repeat} runs per measure"
    )
    # How busy the other processes kept the machine while the measures ran.
    busy_start, own_start, wall_start = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
    # Warm-up: libphonenumber's lazy metadata and the first full-size allocations.
    hash_phone_numbers(values[: min(n, 20_000)], KEY, args.region)
    e164 = normalize_phone_numbers(values, args.region)["phone_e164"]
    texts = [None if pd.isna(text) else text for text in e164.astype(object)]
    valid = sum(text is not None for text in texts)

    total, total_runs, hashed = _median(lambda: hash_phone_numbers(values, KEY, args.region), repeat)
    hashing, hashing_runs, alone = _median(lambda: hash_e164(e164, KEY), repeat)
    normalize, normalize_runs, _ = _median(lambda: normalize_phone_numbers(values, args.region), repeat)
    naive, naive_runs, expected = _median(lambda: _naive(texts, key), repeat)
    copy, copy_runs, copied = _median(lambda: _hmac_copy(texts, key), repeat)

    print(_line("hash_phone_numbers (normalise + hash)", total, total_runs, n))
    print(
        _line(
            f"hash_e164 alone ({valid:,} E.164 texts, {e164.nunique():,} distinct)",
            hashing,
            hashing_runs,
            valid,
            "text",
        )
    )
    print(_line("normalize_phone_numbers alone (baseline)", normalize, normalize_runs, n))
    print(_line("naive hmac.new(...) per E.164 text (baseline)", naive, naive_runs, valid, "text"))
    print(_line("hmac.new(key).copy() per E.164 text", copy, copy_runs, valid, "text"))
    print(
        f"ratios: hash_phone_numbers = {total / normalize:.2f}x normalize_phone_numbers "
        f"(+{total - normalize:.2f} s); hash_e164 {naive / hashing:.1f}x faster than the naive loop, "
        f"{copy / hashing:.1f}x faster than the copied HMAC object"
    )
    for label, seconds, target in (
        ("total", total, TOTAL_TARGET),
        ("E.164 hashing", hashing, HASHING_TARGET),
    ):
        verdict = "met" if seconds < target else "NOT met"
        if n < 1_000_000:
            verdict += " (the targets are for 1,000,000 values)"
        print(f"target {label} < {target} s: {verdict}")

    identical = (
        alone.astype(object).where(alone.notna(), None).tolist() == expected == copied
        and hashed["phone_hash"].equals(alone)
        and hashed["reason"].equals(normalize_phone_numbers(values, args.region)["reason"])
    )
    print(f"hashes identical to the naive loop's: {'yes' if identical else 'NO'}")
    busy_end = _busy_cpu_seconds()
    if busy_start is not None and busy_end is not None:
        others = (busy_end - busy_start) - (_own_cpu_seconds() - own_start)
        print(
            f"other processes kept {max(others, 0.0) / (time.perf_counter() - wall_start):.2f} of "
            f"{os.cpu_count()} CPUs busy on average during the measures (near 0: an idle machine)"
        )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
