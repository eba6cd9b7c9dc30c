"""A query's result, read a chunk at a time without holding it in memory.

Shared by the two operators that read a warehouse query of any size: the suppression and bulk
operators (whole audience rows, :func:`~airflow_provider_smspartner.bulk.sources.rows_from_sql`)
and :class:`~airflow_provider_smspartner.transfers.phone_numbers_to_sql.PhoneNumbersToSqlOperator`
(a key and a phone column). Neither may hold a contact table in memory, so both read it here.

SQLAlchemy streams it (``yield_per``: ``stream_results`` with a bounded buffer, read by
``Result.partitions``): a server-side cursor on PostgreSQL (psycopg 3 and psycopg2) and an
unbuffered one on MySQL/MariaDB (mysqlclient, PyMySQL); SQLite's cursor steps through the result.
Import-light (imported at DAG-parse time): SQLAlchemy loads when a query runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from airflow_provider_smspartner.sql.dbapi import unpooled_engine


@contextmanager
def stream_query(
    hook: Any, sql: str, chunk_size: int, conn_id: str = ""
) -> Iterator[tuple[list[str], Iterator[Sequence[Any]]]]:
    """Run ``sql`` on ``hook``'s database; yield the result's column names and its rows (tuple-like),
    in lists of at most ``chunk_size``, at least one (empty when the result is).

    The query runs when the context is entered; the connection stays open until it exits. Once
    the rows are exhausted the read's transaction ends, so the source's locks are released
    before anything else (a destination table, the API) is written. The text goes to the driver
    as it is, with no parameters: a ``%`` or a ``:name`` in it is plain SQL.

    :param hook: any DbApiHook.
    :param conn_id: the hook's connection id, to name it in errors.
    :raises ValueError: when the query returns no result set.
    """
    engine = unpooled_engine(hook)
    try:
        with engine.connect() as conn:
            streaming = conn.execution_options(yield_per=chunk_size, no_parameters=True)
            result = streaming.exec_driver_sql(sql)
            try:
                if not result.returns_rows:
                    raise ValueError(
                        f"The sql query on {conn_id!r} returned no result set; it must be a SELECT."
                    )

                def batches() -> Iterator[Sequence[Any]]:
                    # The driver's own rows, not SQLAlchemy Row objects: building those cost 2.7 s
                    # per million rows, more than the read itself (1.1 s, PostgreSQL), and no
                    # caller needs them. ``_fetchmany_impl`` is what ``fetchmany`` and
                    # ``partitions`` read through, with the buffer of rows SQLAlchemy may have
                    # fetched early (psycopg2's named cursors describe late); there is no public
                    # call for it. tests/sql/test_stream.py checks it on every driver we support.
                    rows = result._fetchmany_impl(chunk_size)
                    yield rows  # one batch at least, empty when the query returned no row
                    while rows and (rows := result._fetchmany_impl(chunk_size)):
                        yield rows
                    result.close()
                    conn.rollback()  # a read: end its transaction and release the source's locks

                yield [str(name) for name in result.keys()], batches()  # noqa: SIM118 (a Result)
            finally:
                # Before the connection's rollback: an unbuffered MySQL cursor must be closed
                # (its unread rows drained) before the session takes another command.
                result.close()
    finally:
        engine.dispose()
