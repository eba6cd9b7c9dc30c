"""Suppression benchmark, in parts (``--only a,b``).

(a) 1,000,000 contacts in a PostgreSQL table (``contact_id`` bigint, ``phone`` text holding the
messy corpus of ``phone_corpus.py``: every French habit, many regions, junk), normalised to
E.164 into another PostgreSQL table, two ways, each in its own process (wall time and peak
memory are its own), the destination dropped before each:

* ``provider``: ``PhoneNumbersToSqlOperator(mode="replace")``: the query read through a
  server-side cursor in chunks, each normalised (vectorised) and COPYed into a staging table,
  then the table replaced in one transaction;
* ``naive``: what one writes first: ``pandas.read_sql``, ``phonenumbers.parse`` +
  ``is_valid_number`` + ``format_number(E164)`` per row, ``DataFrame.to_sql``.

Then both tables are compared row by row (``phone_e164`` per ``contact_id``, NULL-safe). Targets:
provider at least 10x faster than naive, peak memory under 500 MiB.

(b) lives in ``bench_suppression_audience.py`` (its ``run_b(args)``); skipped while that file is
missing. It may add its own options with ``add_arguments(parser)``.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_suppression.py                 # a (and b)
    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_suppression.py --only a --contacts 100000

Prints; exits non-zero when the E.164 results differ.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from _common import REPO_ROOT, run_measured

from airflow_provider_smspartner.utils.arguments import DEFAULT_CHUNK_SIZE

PG = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": "test"}
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_DSN = "host=127.0.0.1 user=postgres dbname=test"
SOURCE = "bench_suppression_contacts"
DESTINATIONS = {"provider": "bench_suppression_phones_provider", "naive": "bench_suppression_phones_naive"}
RATIO_TARGET = 10.0
MEMORY_TARGET = 500 * 1024**2
MiB = 1024**2
PARTS = ("a", "b")


# ------------------------------------------------------------------------------ measured children
def child_provider(table: str, chunk_size: int) -> None:
    os.environ["AIRFLOW_CONN_BENCH_PG"] = json.dumps(PG)
    from airflow_provider_smspartner.transfers.phone_numbers_to_sql import PhoneNumbersToSqlOperator

    operator = PhoneNumbersToSqlOperator(
        task_id="bench",
        sql=f"SELECT contact_id, phone FROM {SOURCE}",
        source_conn_id="bench_pg",
        key_column="contact_id",
        phone_column="phone",
        destination_table=table,
        mode="replace",
        chunk_size=chunk_size,
    )
    started = time.perf_counter()
    result = operator.execute({})  # type: ignore[arg-type]
    print(json.dumps({"seconds": time.perf_counter() - started, **result}))


def child_naive(table: str) -> None:
    import pandas as pd
    import phonenumbers
    from sqlalchemy import create_engine

    engine = create_engine(PG_URL)
    started = time.perf_counter()
    frame = pd.read_sql(f"SELECT contact_id, phone FROM {SOURCE}", engine)
    e164 = []
    for value in frame["phone"]:
        if not isinstance(value, str):  # NULL, read as NaN
            e164.append(None)
            continue
        try:
            number = phonenumbers.parse(value, "FR")
        except phonenumbers.NumberParseException:
            e164.append(None)
            continue
        valid = phonenumbers.is_valid_number(number)
        e164.append(
            phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) if valid else None
        )
    frame["phone_e164"] = e164
    frame[["contact_id", "phone_e164"]].to_sql(table, engine, if_exists="replace", index=False)
    valid = int(frame["phone_e164"].notna().sum())
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": len(frame), "valid": valid}))


# ------------------------------------------------------------------------------ part (a)
def seed_contacts(contacts: int, seed: int) -> None:
    """``SOURCE``: ``contacts`` rows of the messy corpus as text (untimed)."""
    import pandas as pd
    import psycopg

    from benchmarks.phone_corpus import generate_corpus

    started = time.perf_counter()
    values = generate_corpus(contacts, seed=seed)
    with psycopg.connect(PG_DSN) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {SOURCE}")
        conn.execute(f"CREATE TABLE {SOURCE} (contact_id bigint PRIMARY KEY, phone text)")
        with conn.cursor().copy(f"COPY {SOURCE} (contact_id, phone) FROM STDIN") as copy:
            for number, value in enumerate(values, start=1):
                text = None if value is None or pd.isna(value) else str(value).replace("\x00", "")
                copy.write_row((number, text))
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {SOURCE}")
        conn.execute("CHECKPOINT")
    print(
        f"seeded {SOURCE}: {contacts:,} contacts in {time.perf_counter() - started:.1f} s (untimed)",
        flush=True,
    )


def drop(*tables: str) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for table in tables:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute("CHECKPOINT")  # no checkpoint of the preparation inside a measurement


def differences() -> tuple[int, int]:
    """Rows of the two tables whose ``phone_e164`` differ (or whose key is in one only), and rows compared."""
    import psycopg

    provider, naive = DESTINATIONS["provider"], DESTINATIONS["naive"]
    with psycopg.connect(PG_DSN) as conn:
        row = conn.execute(
            f"SELECT count(*) FILTER (WHERE p.contact_id IS NULL OR n.contact_id IS NULL "
            f"OR p.phone_e164 IS DISTINCT FROM n.phone_e164), count(*) "
            f"FROM {provider} p FULL JOIN {naive} n ON p.contact_id = n.contact_id"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def run_a(args: argparse.Namespace) -> bool:
    """Part (a); True when the two approaches wrote the same E.164 numbers."""
    print(f"(a) {args.contacts:,} contacts, PostgreSQL -> E.164 -> PostgreSQL", flush=True)
    seed_contacts(args.contacts, args.seed)
    results = {}

    def measure(name: str, fresh: bool = True) -> dict:
        table = DESTINATIONS[name]
        if fresh:
            drop(table)
        argv = [sys.executable, __file__, "--child", name, "--table", table]
        output, peak = run_measured([*argv, "--chunk-size", str(args.chunk_size)])
        result = json.loads(output.strip().splitlines()[-1]) | {"peak": peak}
        print(f"    {name}{'' if fresh else ' again, over its table'}: {result['seconds']:.1f} s", flush=True)
        return result

    for name in ("provider", "naive"):
        results[name] = measure(name)
    differing, compared = differences()
    # The daily run: replace over the previous run's table (counts joined, indexes rebuilt).
    again = measure("provider", fresh=False)
    provider, naive = results["provider"], results["naive"]
    ratio = naive["seconds"] / provider["seconds"]
    rows = provider["rows"]
    print(
        f"(a) provider: {rows:,} contacts -> {provider['table']} in {provider['seconds']:.1f} s "
        f"({rows / provider['seconds']:,.0f} rows/s; {provider['valid']:,} valid, {provider['invalid']:,} invalid), "
        f"peak memory {provider['peak'] / MiB:,.0f} MiB (target < {MEMORY_TARGET / MiB:,.0f}: "
        f"{'met' if provider['peak'] < MEMORY_TARGET else 'MISSED'})"
    )
    print(
        f"(a)    naive: read_sql + phonenumbers per row + to_sql in {naive['seconds']:.1f} s "
        f"({naive['valid']:,} valid), peak memory {naive['peak'] / MiB:,.0f} MiB"
    )
    print(
        f"(a)    provider again, replace over its own {rows:,}-row table: {again['seconds']:.1f} s, "
        f"peak memory {again['peak'] / MiB:,.0f} MiB ({naive['seconds'] / again['seconds']:.1f}x naive)"
    )
    print(
        f"(a)    ratio: {ratio:.1f}x faster (target >= {RATIO_TARGET:g}x: {'met' if ratio >= RATIO_TARGET else 'MISSED'})"
    )
    same = differing == 0 and compared == rows
    print(
        f"(a)    E.164 identical: {'yes' if same else 'NO'} ({compared:,} rows compared by contact_id, "
        f"{differing:,} differ)",
        flush=True,
    )
    if not args.keep:
        drop(SOURCE, *DESTINATIONS.values())
    return same


# ------------------------------------------------------------------------------ part (b)
def _part_b_module():  # type: ignore[no-untyped-def]
    """``bench_suppression_audience`` when the file exists, else None."""
    if not (Path(__file__).parent / "bench_suppression_audience.py").exists():
        return None
    return importlib.import_module("bench_suppression_audience")


def run_part_b(args: argparse.Namespace) -> None:
    module = _part_b_module()
    if module is None:
        print("(b) skipped: benchmarks/bench_suppression_audience.py is not there", flush=True)
        return
    module.run_b(args)


# ------------------------------------------------------------------------------ driver
def main() -> None:
    sys.path.insert(0, str(REPO_ROOT))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(PARTS), help="parts to run, comma-separated (default a,b)")
    parser.add_argument("--contacts", type=int, default=1_000_000, help="(a) contacts in the source table")
    parser.add_argument("--seed", type=int, default=2026, help="(a) corpus seed")
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="(a) the operator's chunk_size"
    )
    parser.add_argument("--keep", action="store_true", help="(a) keep the tables afterwards")
    parser.add_argument("--child", choices=["provider", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    module = _part_b_module()
    if module is not None and hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    args = parser.parse_args()
    if args.child == "provider":
        return child_provider(args.table, args.chunk_size)
    if args.child == "naive":
        return child_naive(args.table)
    parts = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--only takes {', '.join(PARTS)}; got {', '.join(unknown)}")
    ok = True
    if "a" in parts:
        ok = run_a(args)
    if "b" in parts:
        run_part_b(args)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
