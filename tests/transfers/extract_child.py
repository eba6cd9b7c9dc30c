"""Runs SmsPartnerStopListToSqlOperator in a child process, for the kill and concurrency tests.

    python -m tests.transfers.extract_child CONN_ID TABLE MODE EVENTS [--chunk-size N]
        [--chunk-delay SECONDS] [--stall] [--go FILE]

Connections come from the environment (``AIRFLOW_CONN_*``), inherited from the test. The child
appends JSON lines ``{"event", "time", ...}`` to EVENTS: ``ready`` (imports done), ``start``
(execute called), ``load_start`` / ``load_end`` (a bulk load, with the table's name), ``stalled``
(with ``--stall``: the first chunk of the load was sent; the child then sleeps until killed),
then ``done`` (with the summary) or ``error`` (type and message).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("conn_id")
    parser.add_argument("table")
    parser.add_argument("mode")
    parser.add_argument("events", type=Path)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--stall", action="store_true")
    parser.add_argument("--go", type=Path, help="wait for this file to exist before extracting")
    args = parser.parse_args()

    def record(event: str, **fields: Any) -> None:
        with args.events.open("a") as out:
            out.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")

    from airflow_provider_smspartner.sql.writer import SqlTableWriter
    from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator

    real_chunks, real_load = SqlTableWriter._chunks, SqlTableWriter._load

    def chunks(self, frame):
        for number, chunk in enumerate(real_chunks(self, frame)):
            if number == 1 and args.stall:
                record("stalled")
                time.sleep(3600)
            time.sleep(args.chunk_delay)
            yield chunk

    def load(self, conn, frame, table):
        record("load_start", table=table.name)
        real_load(self, conn, frame, table)
        record("load_end", table=table.name)

    SqlTableWriter._chunks = chunks  # type: ignore[method-assign]
    SqlTableWriter._load = load  # type: ignore[method-assign]

    operator = SmsPartnerStopListToSqlOperator(
        task_id="extract",
        sql_conn_id=args.conn_id,
        table=args.table,
        mode=args.mode,
        chunk_size=args.chunk_size,
    )
    record("ready")
    while args.go is not None and not args.go.exists():
        time.sleep(0.01)
    record("start")
    try:
        summary = operator.execute({})
    except Exception as exc:
        record("error", type=type(exc).__name__, message=str(exc))
        raise
    record("done", summary=summary)


if __name__ == "__main__":
    main()
