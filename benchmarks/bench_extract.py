"""Extract benchmark: 1,000,000 stops from the sandbox into PostgreSQL, ``replace`` and ``upsert``.

Measured in one run, each approach in its own process (wall time and peak memory are its own; the
sandbox runs in another), every target table first set to "yesterday's list" (today's list less
its newest 1 %, plus 0.5 % of stops removed today, first seen on earlier days), untimed:

* ``replace``: ``SmsPartnerStopListToSqlOperator(mode="replace")``: API fetch, parsing, E.164,
  run log, and the table reloaded with ``first_seen_at`` kept;
* ``naive``: what the benchmark has always compared with: one ``requests.get``,
  ``pandas.DataFrame(body["data"])``, ``DataFrame.to_sql(if_exists="replace")``;
* ``floor``: PostgreSQL alone reaching the same end state as ``replace`` from ready CSV by its
  fastest path, in one transaction: the kept ``first_seen_at`` copied to a temporary table, the
  CSV COPYed into a temporary table, ``TRUNCATE``, indexes dropped, ``INSERT ... SELECT`` joining
  the two, key and indexes rebuilt. Its CSV and connection are ready before the clock starts;
* ``floor-binary`` (for information): the same SQL path fed binary COPY, as the provider sends;
* ``load`` (for information): PostgreSQL's share of the provider's own path: ``TRUNCATE``, binary
  COPY of the final rows (``first_seen_at`` already known) into the bare table, indexes rebuilt;
* ``upsert``: ``SmsPartnerStopListToSqlOperator(mode="upsert")`` (1 % new stops, 0.5 % removed);
* ``insert_rows``: what a user would reach for: ``requests.get``, ``pandas.DataFrame``, then
  ``PostgresHook.insert_rows(..., replace=True, replace_index="stop_id")``.

The sandbox's list body is built once before the first measurement, so every approach pays the
same transfer. Rounds alternate the order; the figures are medians. Prints; asserts nothing.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_extract.py            # 1,000,000 stops, 3 rounds
    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_extract.py --stops 100000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import API_KEY, run_measured, sandbox_process

PG = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": "test"}
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_DSN = "host=127.0.0.1 user=postgres dbname=test"
MEMORY_TARGET = 1024**3
NEW_SHARE, REMOVED_SHARE = 0.01, 0.005
#: Columns of the ready CSV (the list as the provider writes it, before first_seen_at is known).
READY_COLUMNS = ("stop_id", "phone_number", "phone_e164", "created_at", "extracted_at", "removed_at")
MiB = 1024**2


def _connections(base_url: str) -> None:
    os.environ["AIRFLOW_CONN_SMSPARTNER_DEFAULT"] = json.dumps(
        {"conn_type": "smspartner", "host": base_url, "password": API_KEY, "extra": {"timeout": 120}}
    )
    os.environ["AIRFLOW_CONN_BENCH_PG"] = json.dumps(PG)


# ------------------------------------------------------------------------------ measured children
def child_provider(base_url: str, table: str, mode: str) -> None:
    _connections(base_url)
    from airflow_provider_smspartner.sql import postgres
    from airflow_provider_smspartner.sql.writer import SqlTableWriter
    from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator

    # How long readers wait on replace: from TRUNCATE (ACCESS EXCLUSIVE) to the commit.
    locked: dict[str, float] = {}
    reload, write = postgres.reload, SqlTableWriter._write_locked

    def timed_reload(conn, table, fill):  # type: ignore[no-untyped-def]
        locked["from"] = time.perf_counter()
        return reload(conn, table, fill)

    def timed_write(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        summary = write(self, *args, **kwargs)
        if "from" in locked:
            locked["seconds"] = time.perf_counter() - locked["from"]
        return summary

    postgres.reload = timed_reload
    SqlTableWriter._write_locked = timed_write  # type: ignore[method-assign]
    operator = SmsPartnerStopListToSqlOperator(
        task_id="bench", sql_conn_id="bench_pg", table=table, mode=mode
    )
    started = time.perf_counter()
    summary = operator.execute({})
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rows": summary["rows_in_list"], "locked": locked.get("seconds")}))


def child_naive(base_url: str, table: str) -> None:
    import pandas as pd
    import requests
    from sqlalchemy import create_engine

    started = time.perf_counter()
    body = requests.get(f"{base_url}/stop-sms/list", params={"apiKey": API_KEY}, timeout=120).json()
    frame = pd.DataFrame(body["data"])
    frame.to_sql(table, create_engine(PG_URL), if_exists="replace")
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": len(frame)}))


def child_insert_rows(base_url: str, table: str) -> None:
    import logging

    import pandas as pd
    import requests

    _connections(base_url)
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    logging.disable(logging.INFO)  # insert_rows logs every commit
    hook = PostgresHook(postgres_conn_id="bench_pg")
    started = time.perf_counter()
    body = requests.get(f"{base_url}/stop-sms/list", params={"apiKey": API_KEY}, timeout=120).json()
    frame = pd.DataFrame(body["data"])
    hook.insert_rows(
        table,
        frame[["id", "phoneNumber", "createdAt"]].itertuples(index=False, name=None),
        target_fields=["stop_id", "phone_number", "created_at"],
        replace=True,
        replace_index="stop_id",
    )
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": len(frame)}))


def _index_definitions(conn, table: str) -> list[tuple[str, str | None, str | None]]:
    """``(index, constraint, definition)`` per index of ``table``: what the floor drops and rebuilds."""
    return conn.execute(
        "SELECT CAST(CAST(i.indexrelid AS regclass) AS text), c.conname, "
        "COALESCE(pg_get_constraintdef(c.oid), pg_get_indexdef(i.indexrelid)) "
        "FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid "
        "WHERE i.indrelid = CAST(%s AS regclass) ORDER BY c.contype = 'p' DESC",
        (table,),
    ).fetchall()


def child_floor(data_path: str, table: str, variant: str) -> None:
    """PostgreSQL alone: ``sql`` reaches the same end state from the ready rows (CSV or binary)
    with SQL only; ``load`` COPYs the final rows (first_seen_at known) into the bare table."""
    import psycopg

    data = Path(data_path).read_bytes()
    copy_format = "binary" if data_path.endswith(".bin") else "csv"
    with psycopg.connect(PG_DSN) as conn:
        conn.execute("SELECT 1")
        started = time.perf_counter()
        conn.execute("SET LOCAL TIME ZONE 'UTC'")
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        indexes = _index_definitions(conn, table)
        if variant == "sql":
            conn.execute(
                f"CREATE TEMP TABLE floor_old ON COMMIT DROP AS SELECT stop_id, first_seen_at FROM {table}"
            )
            conn.execute(
                "CREATE TEMP TABLE floor_new (stop_id bigint, phone_number text, phone_e164 varchar(64), "
                "created_at timestamptz, extracted_at timestamptz, removed_at timestamptz) ON COMMIT DROP"
            )
        conn.execute(f"TRUNCATE {table}")
        for name, constraint, _ in indexes:
            conn.execute(
                f"ALTER TABLE {table} DROP CONSTRAINT {constraint}" if constraint else f"DROP INDEX {name}"
            )
        target = "floor_new" if variant == "sql" else table
        columns = ", ".join(READY_COLUMNS) if variant == "sql" else ""
        with conn.cursor().copy(
            f"COPY {target} {f'({columns})' if columns else ''} FROM STDIN (FORMAT {copy_format})"
        ) as copy:
            for offset in range(0, len(data), 8 << 20):
                copy.write(data[offset : offset + (8 << 20)])
        if variant == "sql":
            conn.execute(
                f"INSERT INTO {table} (stop_id, phone_number, phone_e164, created_at, first_seen_at, "
                "extracted_at, removed_at) SELECT n.stop_id, n.phone_number, n.phone_e164, n.created_at, "
                "COALESCE(o.first_seen_at, n.extracted_at), n.extracted_at, n.removed_at "
                "FROM floor_new n LEFT JOIN floor_old o USING (stop_id)"
            )
        for _, constraint, definition in indexes:
            conn.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {constraint} {definition}" if constraint else definition
            )
        conn.commit()
        print(json.dumps({"seconds": time.perf_counter() - started}))


# ------------------------------------------------------------------------------ preparation
def build_csvs(base_url: str, workdir: Path, yesterday: str) -> dict[str, object]:
    """Fetch today's list once; write yesterday's table content, the ready CSV and the final rows."""
    _connections(base_url)
    import numpy as np
    import pandas as pd

    from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
    from airflow_provider_smspartner.sql.copy_encoding import (
        BINARY_SIGNATURE,
        BINARY_TRAILER,
        copy_binary,
        copy_csv,
    )
    from airflow_provider_smspartner.sql.tables import TableSpec, stop_list_table_spec

    today = SmsPartnerHook().get_stop_list_df().sort_values("stop_id").reset_index(drop=True)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    today["extracted_at"] = now
    today["removed_at"] = pd.Series(pd.NaT, index=today.index, dtype="datetime64[us, UTC]")
    spec = stop_list_table_spec()
    ready = TableSpec(columns=tuple(c for c in spec.columns if c.name in READY_COLUMNS))

    rng = np.random.default_rng(13)
    listed = len(today) - round(len(today) * NEW_SHARE)  # the newest 1 % arrive today
    gone = round(len(today) * REMOVED_SHARE)
    old = today.iloc[:listed].copy()
    extra = today.sample(gone, random_state=1).copy()
    extra["stop_id"] = today["stop_id"].max() + 1 + np.arange(gone)  # removed today
    old = pd.concat([old, extra], ignore_index=True)
    days = rng.integers(1, 900, len(old)).astype("timedelta64[D]")
    old["first_seen_at"] = pd.Series(pd.Timestamp(yesterday, tz="UTC") - days, index=old.index)
    old["extracted_at"] = pd.Timestamp(yesterday, tz="UTC")

    final = today.copy()
    final["first_seen_at"] = final["stop_id"].map(old.set_index("stop_id")["first_seen_at"]).fillna(now)

    paths = {}
    for name, frame, frame_spec, binary in (
        ("yesterday", old, spec, False),
        ("ready", today, ready, False),
        ("ready_binary", today, ready, True),
        ("final_binary", final, spec, True),
    ):
        paths[name] = workdir / f"{name}.{'bin' if binary else 'csv'}"
        encode = copy_binary if binary else copy_csv
        with paths[name].open("wb") as out:
            out.write(BINARY_SIGNATURE if binary else b"")
            for start in range(0, len(frame), 100_000):
                out.write(encode(frame.iloc[start : start + 100_000], frame_spec))
            out.write(BINARY_TRAILER if binary else b"")
    return {
        "paths": paths,
        "today": len(today),
        "yesterday": len(old),
        "new": len(today) - listed,
        "gone": gone,
    }


def prepare(table: str, yesterday_csv: Path | None) -> None:
    """``table`` (the provider's shape) holding yesterday's list, vacuumed and checkpointed."""
    import psycopg

    from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
    from airflow_provider_smspartner.sql.tables import stop_list_table_spec
    from airflow_provider_smspartner.sql.writer import SqlTableWriter

    drop(table, f"{table}_runs")
    if yesterday_csv is not None:
        SqlTableWriter(resolve_dbapi_hook("bench_pg"), table, stop_list_table_spec()).ensure_table()
        names = ", ".join(stop_list_table_spec().names)
        with psycopg.connect(PG_DSN) as conn:
            conn.execute("SET TIME ZONE 'UTC'")
            sql = f"COPY {table} ({names}) FROM STDIN (FORMAT csv)"
            with conn.cursor().copy(sql) as copy, yesterday_csv.open("rb") as source:
                while block := source.read(8 << 20):
                    copy.write(block)
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        if yesterday_csv is not None:
            conn.execute(f"VACUUM (ANALYZE) {table}")  # as autovacuum would have left it by now
        conn.execute("CHECKPOINT")  # no checkpoint of the preparation inside a measurement


def drop(*tables: str) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for table in tables:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def end_state(table: str, today_start: str) -> tuple:
    """What must agree between ``replace`` and the floor: rows, numbers, times, kept first_seen_at."""
    import psycopg

    with psycopg.connect(PG_DSN) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        state = conn.execute(
            "SELECT count(*), md5(string_agg(concat_ws('|', stop_id, phone_number, phone_e164, created_at, "
            "CASE WHEN first_seen_at < %s THEN first_seen_at::text ELSE 'today' END, removed_at), ',' "
            f"ORDER BY stop_id)) FROM {table}",
            (today_start,),
        ).fetchone()
        indexes = sorted(d.replace(table, "<table>") for _, _, d in _index_definitions(conn, table))
    return (*state, indexes)


# ------------------------------------------------------------------------------ driver
def _median(values: list[float]) -> float:
    return statistics.median(values)


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stops", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement (medians)")
    parser.add_argument(
        "--baseline-rounds", type=int, default=1, help="rounds of the slow insert_rows baseline"
    )
    parser.add_argument(
        "--child", choices=["provider", "naive", "floor", "insert_rows"], help=argparse.SUPPRESS
    )
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--arg", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "provider":
        return child_provider(args.url, args.table, args.arg)
    if args.child == "naive":
        return child_naive(args.url, args.table)
    if args.child == "insert_rows":
        return child_insert_rows(args.url, args.table)
    if args.child == "floor":
        return child_floor(args.url, args.table, args.arg)

    import requests

    print(f"seeding the sandbox with {args.stops:,} stops ...", flush=True)
    with (
        sandbox_process(args.stops) as base_url,
        tempfile.TemporaryDirectory(prefix="bench-extract-") as work,
    ):
        requests.get(f"{base_url}/stop-sms/list", params={"apiKey": API_KEY}, timeout=120).raise_for_status()
        today_start = time.strftime("%Y-%m-%d", time.gmtime())
        yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86_400))
        data = build_csvs(base_url, Path(work), yesterday)
        paths: dict[str, Path] = data["paths"]  # type: ignore[assignment]
        print(
            f"today's list: {data['today']:,} stops, {data['new']:,} of them new; yesterday's table: "
            f"{data['yesterday']:,} stops, {data['gone']:,} of them removed today",
            flush=True,
        )

        #: name -> (child, its argument, table prepared with yesterday's list?, url or CSV)
        plans = {
            "replace": ("provider", "replace", True, base_url),
            "naive": ("naive", "", False, base_url),
            "floor": ("floor", "sql", True, str(paths["ready"])),
            "floor-binary": ("floor", "sql", True, str(paths["ready_binary"])),
            "load": ("floor", "load", True, str(paths["final_binary"])),
            "upsert": ("provider", "upsert", True, base_url),
            "insert_rows": ("insert_rows", "", True, base_url),
        }

        def measure(name: str) -> dict:
            child, arg, yesterday_table, url = plans[name]
            table = f"bench_extract_{name.replace('-', '_')}"
            prepare(table, paths["yesterday"] if yesterday_table else None)
            argv = [sys.executable, __file__, "--child", child, "--url", url, "--table", table, "--arg", arg]
            output, peak = run_measured(argv)
            return json.loads(output.strip().splitlines()[-1]) | {"peak": peak}

        measures = [name for name in plans if name != "insert_rows"]
        results: dict[str, list[dict]] = {name: [] for name in plans}
        for number in range(args.rounds):
            order = measures[number % len(measures) :] + measures[: number % len(measures)]
            line = []
            for name in order:
                results[name].append(measure(name))
                line.append(f"{name} {results[name][-1]['seconds']:.1f} s")
            if number == 0:
                same = end_state("bench_extract_replace", today_start) == end_state(
                    "bench_extract_floor", today_start
                )
            print(f"round {number + 1}/{args.rounds}: " + ", ".join(line), flush=True)
        for number in range(args.baseline_rounds):
            results["insert_rows"].append(measure("insert_rows"))
            print(
                f"insert_rows round {number + 1}/{args.baseline_rounds}: {results['insert_rows'][-1]['seconds']:.1f} s",
                flush=True,
            )
        drop(
            *(f"bench_extract_{name.replace('-', '_')}{suffix}" for name in plans for suffix in ("", "_runs"))
        )

    seconds = {name: [r["seconds"] for r in runs] for name, runs in results.items()}
    median = {name: _median(values) for name, values in seconds.items() if values}
    peak = {name: max(r["peak"] for r in runs) for name, runs in results.items() if runs}
    rows = data["today"]
    for name, label in (
        ("replace", "replace"),
        ("naive", "naive"),
        ("upsert", "upsert"),
        ("insert_rows", "insert_rows"),
    ):
        if name in median:
            print(
                f"{label:>11}: {rows:,} stops -> PostgreSQL in {median[name]:.1f} s (median of {_runs(seconds[name])} s; "
                f"{rows / median[name]:,.0f} rows/s), peak memory {peak[name] / MiB:,.0f} MiB",
                flush=True,
            )
    print(
        f"      floor: PostgreSQL alone, same end state from ready CSV (first_seen_at kept; COPY into a temporary "
        f"table, TRUNCATE, INSERT ... SELECT, key + index built; one transaction): {median['floor']:.1f} s "
        f"(median of {_runs(seconds['floor'])} s)"
    )
    print(
        f"      floor, fed binary COPY instead of CSV (as the provider sends): {median['floor-binary']:.1f} s "
        f"(median of {_runs(seconds['floor-binary'])} s)"
    )
    print(
        f"       load: PostgreSQL's share of the provider's path (TRUNCATE, binary COPY of the final rows into "
        f"the bare table, key + index built): {median['load']:.1f} s (median of {_runs(seconds['load'])} s)"
    )
    held = [r["locked"] for r in results["replace"] if r.get("locked")]
    if held:
        print(
            f"replace held its ACCESS EXCLUSIVE lock (TRUNCATE to commit; readers wait) for "
            f"{_median(held):.1f} s (median of {_runs(held)} s)"
        )
    print(
        f"end state: replace and floor agree (rows, numbers, times, kept first_seen_at, indexes): {'yes' if same else 'NO'}"
    )
    ratio = median["naive"] / median["replace"]
    to_floor = median["replace"] / median["floor"]
    print(
        f"ratio: replace is {ratio:.1f}x faster than naive (target >= 3x: {'met' if ratio >= 3 else 'NOT met'}); "
        f"{to_floor:.2f}x the floor (target <= 1.6x: {'met' if to_floor <= 1.6 else 'NOT met'})"
    )
    if "insert_rows" in median:
        upsert_ratio = median["insert_rows"] / median["upsert"]
        print(
            f"ratio: upsert is {upsert_ratio:.1f}x faster than insert_rows(replace=True) "
            f"(target >= 3x: {'met' if upsert_ratio >= 3 else 'NOT met'})"
        )
    worst = max(peak["replace"], peak["upsert"])
    print(
        f"peak memory: replace {peak['replace'] / 1024**3:.2f} GiB, upsert {peak['upsert'] / 1024**3:.2f} GiB "
        f"(target < 1 GiB: {'met' if worst < MEMORY_TARGET else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
