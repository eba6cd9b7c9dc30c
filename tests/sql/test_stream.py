"""stream_query on real SQLite, PostgreSQL (psycopg 3 and psycopg2) and MariaDB: a query's rows in
chunks, from a cursor that leaves the result on the server, and the read's transaction ended."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.sql.stream import stream_query


@pytest.fixture
def seven_rows(warehouse_conn: str) -> Iterator[tuple[str, str]]:
    """``(connection id, table)``: a table of seven ``(id, phone)`` rows, dropped after."""
    table = f"stream_{uuid.uuid4().hex[:10]}"
    hook = resolve_dbapi_hook(warehouse_conn)
    hook.run(f"CREATE TABLE {table} (id INTEGER, phone VARCHAR(20))", autocommit=True)
    hook.insert_rows(table, [(i, f"061234567{i}") for i in range(7)], target_fields=["id", "phone"])
    yield warehouse_conn, table
    hook.run(f"DROP TABLE {table}", autocommit=True)


def _read(hook, sql: str, chunk_size: int) -> tuple[list[str], list[list]]:
    with stream_query(hook, sql, chunk_size, "source") as (names, batches):
        return names, [list(batch) for batch in batches]


def test_rows_arrive_in_chunks_of_at_most_chunk_size(seven_rows):
    conn_id, table = seven_rows
    names, batches = _read(resolve_dbapi_hook(conn_id), f"SELECT id, phone FROM {table} ORDER BY id", 3)
    assert [name.lower() for name in names] == ["id", "phone"]
    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert [tuple(row) for batch in batches for row in batch] == [(i, f"061234567{i}") for i in range(7)]


def test_an_empty_result_is_one_empty_chunk(seven_rows):
    conn_id, table = seven_rows
    names, batches = _read(resolve_dbapi_hook(conn_id), f"SELECT id, phone FROM {table} WHERE id < 0", 3)
    assert [name.lower() for name in names] == ["id", "phone"]
    assert batches == [[]]


def test_a_statement_without_rows_names_the_connection(sqlite_conn):
    with pytest.raises(ValueError, match=r"'source' returned no result set; it must be a SELECT"):
        _read(resolve_dbapi_hook(sqlite_conn), "CREATE TABLE nothing_here (id INTEGER)", 3)


@pytest.fixture
def cursors() -> Iterator[list[Any]]:
    """The DBAPI cursor of every statement SQLAlchemy runs while the test does."""
    seen: list[Any] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(cursor)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


@pytest.mark.parametrize(("fixture", "kind"), [("postgres_conn", "ServerCursor"), ("mysql_conn", "SSCursor")])
def test_servers_keep_the_result_on_their_side(request, cursors, fixture, kind):
    """PostgreSQL: a named (server-side) cursor; MySQL/MariaDB: an unbuffered one."""
    _read(resolve_dbapi_hook(request.getfixturevalue(fixture)), "SELECT 1 AS one", 10)
    assert [type(cursor).__name__ for cursor in cursors] == [kind]


def test_psycopg2_streams_too_although_its_named_cursor_describes_late(postgres_conn, cursors):
    """psycopg2 (still the driver of older Postgres providers) gives a named cursor's column
    names only after the first fetch."""
    url = "postgresql+psycopg2://postgres@127.0.0.1/test"
    hook = SimpleNamespace(
        get_sqlalchemy_engine=lambda engine_kwargs=None: sa.create_engine(url, **engine_kwargs)
    )
    sql = "SELECT n AS id, 'x' || n AS phone FROM generate_series(1, 7) AS n"
    names, batches = _read(hook, sql, 3)
    assert names == ["id", "phone"]
    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert batches[0][0] == (1, "x1")
    (cursor,) = cursors
    assert cursor.name  # a named cursor: the result stays on the server


def test_the_read_ends_its_transaction_once_the_rows_are_read(postgres_conn, cursors):
    """Locks a read took are released before the caller writes anywhere else."""
    hook = resolve_dbapi_hook(postgres_conn)
    with stream_query(hook, "SELECT 1 AS one", 10, "source") as (_, batches):
        assert list(batches) == [[(1,)]]
        conn = cursors[0].connection
        assert conn.info.transaction_status.name == "IDLE"  # not INTRANS: the read was ended
    assert conn.closed


def test_percent_signs_and_colons_are_plain_sql(warehouse_conn):
    """The text goes to the driver without parameters: no placeholder is read into it."""
    names, batches = _read(resolve_dbapi_hook(warehouse_conn), "SELECT '50%' AS rate, ':name' AS tag", 10)
    assert [name.lower() for name in names] == ["rate", "tag"]
    assert [tuple(row) for row in batches[0]] == [("50%", ":name")]
