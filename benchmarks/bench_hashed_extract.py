"""Keyed-hash mode's cost on the extract: 1,000,000 stops from the sandbox into PostgreSQL, clear vs hashed.

``SmsPartnerStopListToSqlOperator(mode="replace")`` into PostgreSQL, once in clear and once with
``hash_key_conn_id`` (HMAC-SHA256 of every E.164 number), each run in its own process (the
sandbox in another). Each measured run replaces a table that already holds the list in the same
mode (made by an untimed run just before, then a checkpoint), as a daily extract does. Rounds
alternate which mode goes first; the figures are medians and the ratio is hashed / clear of the
medians. Prints; asserts nothing.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_hashed_extract.py               # 1,000,000 stops, 3 rounds
    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_hashed_extract.py --stops 100000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from _common import API_KEY, run_measured, sandbox_process

PG = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": "test"}
#: A benchmark key (32+ characters), not a secret.
HASH_KEY = {"conn_type": "generic", "password": "bench-" + "k" * 40, "extra": {"key_id": "bench"}}
MODES = ("clear", "hashed")
MiB = 1024**2


def child(base_url: str, table: str, mode: str) -> None:
    """One extract run; prints its seconds and rows."""
    os.environ["AIRFLOW_CONN_SMSPARTNER_DEFAULT"] = json.dumps(
        {"conn_type": "smspartner", "host": base_url, "password": API_KEY, "extra": {"timeout": 120}}
    )
    os.environ["AIRFLOW_CONN_BENCH_PG"] = json.dumps(PG)
    os.environ["AIRFLOW_CONN_BENCH_HASH_KEY"] = json.dumps(HASH_KEY)
    from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator

    operator = SmsPartnerStopListToSqlOperator(
        task_id="bench",
        sql_conn_id="bench_pg",
        table=table,
        mode="replace",
        hash_key_conn_id="bench_hash_key" if mode == "hashed" else None,
    )
    started = time.perf_counter()
    summary = operator.execute({})
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": summary["rows_in_list"]}))


def drop(*tables: str) -> None:
    """Drop ``tables``, then :func:`checkpoint`."""
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        for table in tables:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    checkpoint()


def checkpoint() -> None:
    """A PostgreSQL checkpoint, done when this returns: each measured run then starts with no WAL
    pending. Without it, the WAL of the untimed run before (and of the rounds before) makes the
    server start a checkpoint during some measured runs and not others: a hashed run writes
    about 1.8 times the WAL of a run in clear (211 MB against 117 MB for a million stops: wider
    rows, a 64-character index), so it crossed the trigger more often, and its times spread from
    4.0 to 6.0 s against 3.5 to 3.8 s in clear."""
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stops", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.url, args.table, args.child)

    import requests

    print(f"seeding the sandbox with {args.stops:,} stops ...", flush=True)
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    tables = {mode: f"bench_hashed_extract_{mode}" for mode in MODES}
    with sandbox_process(args.stops) as base_url:
        # Builds the list body once, so every run pays the same transfer.
        requests.get(f"{base_url}/stop-sms/list", params={"apiKey": API_KEY}, timeout=120).raise_for_status()

        def run(mode: str) -> dict:
            argv = [sys.executable, __file__, "--child", mode, "--url", base_url, "--table", tables[mode]]
            output, peak = run_measured(argv)
            return json.loads(output.strip().splitlines()[-1]) | {"peak": peak}

        for number in range(args.rounds):
            order = MODES if number % 2 == 0 else MODES[::-1]
            line = []
            for mode in order:
                drop(tables[mode], f"{tables[mode]}_runs")
                run(mode)  # untimed: the table holds the list in this mode, as after yesterday's run
                checkpoint()
                results[mode].append(run(mode))
                line.append(f"{mode} {results[mode][-1]['seconds']:.1f} s")
            print(f"round {number + 1}/{args.rounds}: " + ", ".join(line), flush=True)
        drop(*tables.values(), *(f"{table}_runs" for table in tables.values()))

    median = {mode: statistics.median(r["seconds"] for r in runs) for mode, runs in results.items()}
    rows = results["clear"][0]["rows"]
    for mode in MODES:
        runs = ", ".join(f"{r['seconds']:.1f}" for r in results[mode])
        peak = max(r["peak"] for r in results[mode]) / MiB
        print(
            f"{mode:>6}: {rows:,} stops -> PostgreSQL (replace) in {median[mode]:.1f} s "
            f"(median of {runs} s), peak memory {peak:,.0f} MiB"
        )
    print(f"hashed / clear: {median['hashed'] / median['clear']:.2f}x (target: within 1.2x)")


if __name__ == "__main__":
    main()
