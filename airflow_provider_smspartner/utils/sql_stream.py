"""A query's result, read a chunk at a time from the driver's streaming cursor where it has one.

Shared by the two operators that read a warehouse query of any size: the suppression and bulk
operators (whole audience rows, :func:`~airflow_provider_smspartner.bulk.sources.rows_from_sql`)
and :class:`~airflow_provider_smspartner.transfers.phone_numbers_to_sql.PhoneNumbersToSqlOperator`
(a key and a phone column). Neither may hold a contact table in memory, so both read it here.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Drivers whose named cursor is a server-side cursor (DECLARE / FETCH): psycopg 3 and psycopg2.
_SERVER_CURSOR_DRIVERS = ("psycopg", "psycopg2")
#: Drivers with an unbuffered cursor class, ``<driver>.cursors.SSCursor``.
_UNBUFFERED_CURSOR_DRIVERS = ("MySQLdb", "pymysql")


def driver_of(conn: Any) -> str:
    """The top-level module of a DB-API connection's class: ``psycopg``, ``MySQLdb``, ``sqlite3``..."""
    return type(conn).__module__.split(".")[0]


def streaming_cursor(conn: Any) -> Any:
    """A cursor that fetches the result as it is read, not all at once.

    A named (server-side) cursor on PostgreSQL, psycopg 3 or psycopg2; ``SSCursor`` on
    MySQL/MariaDB, mysqlclient or PyMySQL; the driver's plain cursor elsewhere (SQLite's steps
    through the result; other drivers may hold it client-side).
    """
    driver = driver_of(conn)
    if driver in _SERVER_CURSOR_DRIVERS:
        return conn.cursor(name=f"smspartner_{uuid.uuid4().hex[:12]}")
    if driver in _UNBUFFERED_CURSOR_DRIVERS:
        return conn.cursor(importlib.import_module(f"{driver}.cursors").SSCursor)
    return conn.cursor()


@contextmanager
def stream_query(
    hook: Any, sql: str, chunk_size: int, conn_id: str = ""
) -> Iterator[tuple[list[str], Iterator[list[Any]]]]:
    """Run ``sql`` on ``hook``'s database; yield the result's column names and its rows, in
    lists of at most ``chunk_size``, at least one (empty when the result is).

    The query runs when the context is entered; the connection stays open until it exits. Once
    the rows are exhausted the read's transaction ends, so the source's locks are released
    before anything else (a destination table, the API) is written.

    :param hook: any DbApiHook.
    :param conn_id: the hook's connection id, to name it in errors.
    :raises ValueError: when the query returns no result set.
    """
    conn = hook.get_conn()
    cursor = streaming_cursor(conn)
    try:
        cursor.execute(sql)
        pending: list[Any] | None = None
        if cursor.description is None and driver_of(conn) == "psycopg2":
            pending = list(cursor.fetchmany(chunk_size))  # psycopg2's named cursors describe late
        if cursor.description is None:
            raise ValueError(f"The sql query on {conn_id!r} returned no result set; it must be a SELECT.")
        names = [str(d[0]) for d in cursor.description]

        def batches() -> Iterator[list[Any]]:
            rows = pending if pending is not None else list(cursor.fetchmany(chunk_size))
            yield rows
            while rows:
                rows = list(cursor.fetchmany(chunk_size))
                if not rows:
                    break
                yield rows
            cursor.close()
            conn.rollback()  # a read: end its transaction and release the source's locks

        yield names, batches()
    finally:
        try:
            cursor.close()
        finally:
            conn.close()
