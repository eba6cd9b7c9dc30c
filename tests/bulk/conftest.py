"""Fixtures of the bulk engine's tests: a results table on each database, the sandbox as the API."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest


def drop_results(conn_id: str, *names: str) -> None:
    """Drop views and tables ``names`` if they exist (views first)."""
    from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook

    hook = resolve_dbapi_hook(conn_id)
    for name in names:
        for kind in ("VIEW", "TABLE"):
            # DROP VIEW of a table (or the reverse) is an error on some databases.
            with contextlib.suppress(Exception):
                hook.run(f"DROP {kind} IF EXISTS {name}")


@pytest.fixture
def results_db(warehouse_conn: str) -> Iterator[tuple[str, str]]:
    """``(conn_id, table)``: a fresh results table name on each database in turn; dropped after."""
    table = f"bulk_results_{uuid.uuid4().hex[:10]}"
    yield warehouse_conn, table
    drop_results(warehouse_conn, f"{table}_final", table)
