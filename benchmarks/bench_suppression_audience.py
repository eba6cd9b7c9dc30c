"""Suppression benchmark, part (b): a 1,000,000-row audience from Parquet against a 1,000,000-stop list.

``SmsPartnerSuppressAudienceOperator(source_path=<audience.parquet>, output_path=<safe.parquet>)``
does everything a run does: one list fetch from the sandbox (a subprocess on loopback), its
``list_sha256``, the audience streamed from Parquet in chunks (every column kept), every number
normalised, invalid / stopped / duplicate rows excluded, the safe rows written to Parquet.

The baseline, measured in the same run and in a process of its own like the operator: one list
fetch (``SmsPartnerHook.get_stop_list_df``) plus ``normalize_phone_numbers`` over the list's
numbers and over the audience's phone column (read beforehand, untimed): the work no suppression
can skip. Target: the operator takes at most 1.5x that sum. The peak memory of each process is
its own (``wait4``). Imports, and the plugin loading of a process's first ObjectStoragePath (a
worker pays it once, at start), happen before the clock starts in both.

The audience: 90 % messy cells from ``phone_corpus`` (formats, regions, junk, repeats), 10 %
numbers of the stop list in mixed forms (E.164, national with spaces, ``0033``, digits only),
shuffled; plus a customer id and a segment column. Stored as text (a phone column holds text).

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_suppression_audience.py
    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_suppression_audience.py --audience-rows 100000 --audience-stops 100000

``benchmarks/bench_suppression.py`` runs this as its part (b) through :func:`run_b`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import API_KEY, run_measured, sandbox_process

TARGET_RATIO = 1.5
LISTED_SHARE = 0.10
MiB = 1024**2


def _connection(base_url: str) -> None:
    os.environ["AIRFLOW_CONN_SMSPARTNER_DEFAULT"] = json.dumps(
        {"conn_type": "smspartner", "host": base_url, "password": API_KEY, "extra": {"timeout": 120}}
    )


# ------------------------------------------------------------------------------ measured children
def child_operator(base_url: str, audience: str, output: str, chunk_size: int) -> None:
    _connection(base_url)
    from airflow_provider_smspartner.operators.smspartner import SmsPartnerSuppressAudienceOperator

    operator = SmsPartnerSuppressAudienceOperator(
        task_id="suppress_audience",
        source_path=audience,
        phone_column="phone",
        output_path=output,
        chunk_size=chunk_size,
    )
    import pandas  # noqa: F401  (loaded by execute; imported first so the clock sees only the run)
    import pyarrow.parquet  # noqa: F401

    from airflow_provider_smspartner.suppression import gate  # noqa: F401
    from airflow_provider_smspartner.utils.storage import to_storage_path

    # The first ObjectStoragePath a process opens loads Airflow's plugins (hook lineage): a
    # worker pays that once at start, not per task.
    with to_storage_path(audience).open("rb"):
        pass
    started = time.perf_counter()
    summary = operator.execute(context={})
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "summary": summary}))


def child_baseline(base_url: str, audience: str) -> None:
    _connection(base_url)
    import pandas as pd

    from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
    from airflow_provider_smspartner.phone_numbers import normalize_phone_numbers

    phones = pd.read_parquet(audience, columns=["phone"])["phone"]  # untimed: the operator reads it too
    hook = SmsPartnerHook()
    started = time.perf_counter()
    frame = hook.get_stop_list_df()
    fetched = time.perf_counter()
    normalize_phone_numbers(frame["phone_number"])
    listed = time.perf_counter()
    e164 = normalize_phone_numbers(phones)["phone_e164"]
    normalised = time.perf_counter()
    # Untimed: what the operator must keep, computed the plain way, to check its counts.
    live = set(frame["phone_e164"].dropna())
    valid = e164.dropna()
    kept = len(set(valid) - live)
    stopped = int(valid.isin(live).sum())
    print(
        json.dumps(
            {
                "fetch": fetched - started,
                "normalise_list": listed - fetched,
                "normalise_audience": normalised - listed,
                "seconds": normalised - started,
                "expected": {"audience": len(phones), "kept": kept, "stopped": stopped},
            }
        )
    )


# ------------------------------------------------------------------------------ data
def build_audience(base_url: str, rows: int, path: Path) -> dict[str, int]:
    """Write the audience Parquet file (untimed)."""
    import pandas as pd
    import requests
    from phone_corpus import generate_corpus

    from airflow_provider_smspartner.phone_numbers import phone_text

    body = requests.get(f"{base_url}/stop-sms/list", params={"apiKey": API_KEY}, timeout=300).json()
    listed = [row["phoneNumber"] for row in body["data"]]
    rng = random.Random(11)
    n_listed = int(rows * LISTED_SHARE)
    forms = (
        lambda e: e,
        lambda e: " ".join(("0" + e[3:])[i : i + 2] for i in range(0, 10, 2)),
        lambda e: "0033" + e[3:],
        lambda e: e[1:],
    )
    picked = [rng.choice(forms)(rng.choice(listed)) for _ in range(n_listed)]
    corpus = [phone_text(value) for value in generate_corpus(rows - n_listed, seed=5)]
    phones = corpus + picked
    rng.shuffle(phones)
    frame = pd.DataFrame(
        {
            "customer_id": range(1, rows + 1),
            "phone": pd.Series(phones, dtype=object),
            "segment": [f"segment_{i % 17}" for i in range(rows)],
        }
    )
    frame.to_parquet(path, index=False, row_group_size=100_000)
    return {"rows": rows, "listed_rows": n_listed}


# ------------------------------------------------------------------------------ driver
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This part's options (``bench_suppression.py`` adds them to its own parser)."""
    group = parser.add_argument_group("(b) audience suppression")
    group.add_argument("--audience-rows", type=int, default=1_000_000, help="(b) audience rows")
    group.add_argument("--audience-stops", type=int, default=1_000_000, help="(b) stops on the sandbox list")
    group.add_argument(
        "--audience-chunk-size", type=int, default=250_000, help="(b) the operator's chunk_size"
    )
    group.add_argument("--audience-rounds", type=int, default=1, help="(b) rounds of each measurement")


def run_b(args: Any) -> None:
    """Run part (b) and print its lines. ``args`` may carry ``audience_rows``, ``audience_stops``,
    ``audience_chunk_size`` and ``audience_rounds`` (:func:`add_arguments`); anything missing
    takes its default."""
    rows = int(getattr(args, "audience_rows", None) or 1_000_000)
    stops = int(getattr(args, "audience_stops", None) or 1_000_000)
    chunk_size = int(getattr(args, "audience_chunk_size", None) or 250_000)
    rounds = int(getattr(args, "audience_rounds", None) or 1)
    import requests

    print(f"(b) seeding the sandbox with {stops:,} stops ...", flush=True)
    with sandbox_process(stops) as base_url, tempfile.TemporaryDirectory(prefix="bench-suppression-") as work:
        requests.get(f"{base_url}/stop-sms/list", params={"apiKey": API_KEY}, timeout=300).raise_for_status()
        audience = Path(work) / "audience.parquet"
        output = Path(work) / "safe_audience.parquet"
        started = time.perf_counter()
        built = build_audience(base_url, rows, audience)
        print(
            f"(b) audience: {built['rows']:,} rows ({built['listed_rows']:,} of them numbers of the list in "
            f"mixed forms), {audience.stat().st_size / MiB:,.0f} MiB of Parquet, built in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
        script = str(Path(__file__).resolve())
        plans = {
            "operator": [script, "--child", "operator", "--url", base_url, "--audience-path", str(audience),
                         "--output-path", str(output), "--audience-chunk-size", str(chunk_size)],
            "baseline": [script, "--child", "baseline", "--url", base_url, "--audience-path", str(audience)],
        }  # fmt: skip
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in plans}
        for number in range(rounds):
            order = list(plans) if number % 2 == 0 else list(reversed(plans))
            for name in order:
                out, peak = run_measured([sys.executable, *plans[name]])
                results[name].append(json.loads(out.strip().splitlines()[-1]) | {"peak": peak})
            print(
                f"(b) round {number + 1}/{rounds}: operator {results['operator'][-1]['seconds']:.2f} s, "
                f"baseline {results['baseline'][-1]['seconds']:.2f} s",
                flush=True,
            )
        import pyarrow.parquet as pq

        written = pq.ParquetFile(output).metadata.num_rows

    def median(name: str, key: str = "seconds") -> float:
        return statistics.median(r[key] for r in results[name])

    operator, baseline = median("operator"), median("baseline")
    fetch, norm_list, norm_audience = (
        median("baseline", key) for key in ("fetch", "normalise_list", "normalise_audience")
    )
    summary = results["operator"][-1]["summary"]
    expected = results["baseline"][-1]["expected"]
    peak = {name: max(r["peak"] for r in runs) for name, runs in results.items()}
    ratio = operator / baseline
    print(
        f"(b) operator: {rows:,} audience rows (Parquet, chunks of {chunk_size:,}) vs {stops:,} stops -> "
        f"Parquet in {operator:.2f} s ({rows / operator:,.0f} rows/s); peak memory {peak['operator'] / MiB:,.0f} MiB"
    )
    print(
        "(b) counts: " + ", ".join(f"{k}={summary[k]:,}" for k in ("audience", "valid", "invalid", "duplicate", "stopped", "kept"))
        + f"; {written:,} rows written"
    )  # fmt: skip
    agree = (
        summary["kept"] == expected["kept"] == written
        and summary["stopped"] == expected["stopped"]
        and summary["audience"] == expected["audience"] == rows
        and summary["audience"] == sum(summary[k] for k in ("kept", "invalid", "duplicate", "stopped"))
    )
    print(
        f"(b) counts agree with the plain computation (kept, stopped, rows written): {'yes' if agree else 'NO'}"
    )
    print(
        f"(b) baseline: list fetch {fetch:.2f} s + normalise the list {norm_list:.2f} s + normalise the "
        f"audience {norm_audience:.2f} s = {baseline:.2f} s; peak memory {peak['baseline'] / MiB:,.0f} MiB"
    )
    print(
        f"(b) ratio: operator / baseline = {ratio:.2f}x (target <= {TARGET_RATIO}x: "
        f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}); vs fetch + normalise the audience only "
        f"({fetch + norm_audience:.2f} s): {operator / (fetch + norm_audience):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--child", choices=["operator", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--audience-path", help=argparse.SUPPRESS)
    parser.add_argument("--output-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "operator":
        return child_operator(args.url, args.audience_path, args.output_path, args.audience_chunk_size)
    if args.child == "baseline":
        return child_baseline(args.url, args.audience_path)
    run_b(args)


if __name__ == "__main__":
    main()
