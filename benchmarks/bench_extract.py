"""Extract benchmark: 1,000,000 stops from the sandbox into a PostgreSQL table, ``replace`` mode.

Compares SmsPartnerStopListToSqlOperator with the naive approach measured in the same run:
one ``requests.get``, ``pandas.DataFrame(...)`` and ``DataFrame.to_sql`` with defaults (through a
SQLAlchemy engine). Each approach runs in its own process, so wall time and peak memory (max RSS)
are its own; the sandbox runs in a third process. Prints figures and the ratio; asserts nothing.

    .venv/bin/python benchmarks/bench_extract.py            # 1,000,000 stops
    .venv/bin/python benchmarks/bench_extract.py --stops 100000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _common import API_KEY, run_measured, sandbox_process

PG = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": "test"}
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MEMORY_TARGET = 1.5 * 1024**3


def child_provider(base_url: str, table: str) -> None:
    os.environ["AIRFLOW_CONN_SMSPARTNER_DEFAULT"] = json.dumps(
        {"conn_type": "smspartner", "host": base_url, "password": API_KEY, "extra": {"timeout": 120}}
    )
    os.environ["AIRFLOW_CONN_BENCH_PG"] = json.dumps(PG)
    from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator

    started = time.perf_counter()
    summary = SmsPartnerStopListToSqlOperator(task_id="bench", sql_conn_id="bench_pg", table=table).execute(
        {}
    )
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": summary["rows_in_list"]}))


def child_naive(base_url: str, table: str) -> None:
    import pandas as pd
    import requests
    from sqlalchemy import create_engine

    started = time.perf_counter()
    body = requests.get(f"{base_url}/stop-sms/list", params={"apiKey": API_KEY}, timeout=120).json()
    frame = pd.DataFrame(body["data"])
    frame.to_sql(table, create_engine(PG_URL), if_exists="replace")
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": len(frame)}))


def child_floor(base_url: str, table: str) -> None:
    """What PostgreSQL itself costs: COPY the same rows, ready-made as CSV, into a fresh table."""
    os.environ["AIRFLOW_CONN_SMSPARTNER_DEFAULT"] = json.dumps(
        {"conn_type": "smspartner", "host": base_url, "password": API_KEY, "extra": {"timeout": 120}}
    )
    import pandas as pd
    import psycopg

    from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
    from airflow_provider_smspartner.transfers.smspartner_to_sql import stop_list_table_spec
    from airflow_provider_smspartner.utils.sql_writer import copy_csv

    frame = SmsPartnerHook().get_stop_list_df()
    frame["extracted_at"] = pd.Timestamp.now(tz="UTC").floor("s")
    frame["removed_at"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
    data = copy_csv(frame, stop_list_table_spec())
    columns = (
        "stop_id bigint {pk}, phone_number varchar(64), phone_e164 varchar(64), created_at timestamptz, "
        "extracted_at timestamptz, removed_at timestamptz"
    )
    timings = {}
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test") as conn:
        for name, kind, pk, index in (
            ("unlogged", "UNLOGGED TABLE", "", False),
            ("logged", "TABLE", "PRIMARY KEY", True),
        ):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE {kind} {table} ({columns.format(pk=pk)})")
            if index:
                conn.execute(f"CREATE INDEX ON {table} (phone_e164)")
            conn.commit()
            started = time.perf_counter()
            with conn.cursor() as cursor:
                cursor.execute("SET LOCAL TIME ZONE 'UTC'")
                with cursor.copy(f"COPY {table} FROM STDIN WITH (FORMAT csv)") as copy:
                    for offset in range(0, len(data), 8 << 20):
                        copy.write(data[offset : offset + (8 << 20)])
            conn.commit()
            timings[name] = time.perf_counter() - started
        conn.execute(f"DROP TABLE {table}")
    print(json.dumps(timings))


def drop(table: str) -> None:
    from sqlalchemy import create_engine, text

    with create_engine(PG_URL).begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stops", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["provider", "naive", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--no-floor", action="store_true", help="skip the raw COPY measurement")
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        {"provider": child_provider, "naive": child_naive, "floor": child_floor}[args.child](
            args.url, args.table
        )
        return

    print(f"seeding the sandbox with {args.stops:,} stops ...", flush=True)
    with sandbox_process(args.stops) as base_url:
        results = {}
        for name in ("provider", "naive"):
            table = f"bench_extract_{name}"
            drop(table)
            output, peak = run_measured(
                [sys.executable, __file__, "--child", name, "--url", base_url, "--table", table]
            )
            results[name] = json.loads(output.strip().splitlines()[-1]) | {"peak": peak}
            drop(table)
            seconds, rows = results[name]["seconds"], results[name]["rows"]
            print(
                f"{name:>8}: {rows:,} stops -> PostgreSQL in {seconds:.1f} s "
                f"({rows / seconds:,.0f} rows/s), peak memory {peak / 1024**2:,.0f} MiB",
                flush=True,
            )
        if not args.no_floor:
            output, _ = run_measured(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "floor",
                    "--url",
                    base_url,
                    "--table",
                    "bench_extract_floor",
                ]
            )
            floor = json.loads(output.strip().splitlines()[-1])
            print(
                f"   floor: PostgreSQL alone, COPY of the same rows as ready CSV: {floor['logged']:.1f} s into a "
                f"table with key + index, {floor['unlogged']:.1f} s into an UNLOGGED table without indexes "
                "(the difference is write-ahead logging and index upkeep, which any approach pays)",
                flush=True,
            )
    ratio = results["naive"]["seconds"] / results["provider"]["seconds"]
    peak = results["provider"]["peak"]
    print(f"ratio: provider is {ratio:.1f}x faster than naive (target >= 5x)")
    print(
        f"peak memory: {peak / 1024**3:.2f} GiB (target < 1.5 GiB: {'met' if peak < MEMORY_TARGET else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
