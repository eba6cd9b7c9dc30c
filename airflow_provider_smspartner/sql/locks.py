"""A per-table write lock on each database, so two writers of one table run one after the other.

PostgreSQL: a transaction-level advisory lock (the write is one transaction there, staging table
included). MySQL/MariaDB: a ``GET_LOCK`` named after the table, held by the session across the
staging DDL, which MySQL commits on its own. SQLite: ``BEGIN IMMEDIATE`` (one transaction too).
A writer that cannot get the lock within its timeout raises ``TimeoutError`` naming the table.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_provider_smspartner.sql.names import TableName
from airflow_provider_smspartner.sql.types import MYSQL

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.2


@contextmanager
def table_lock(engine: Engine, dialect_name: str, table: TableName, timeout: float) -> Iterator[Connection]:
    """A connection holding ``table``'s write lock, with a transaction open under it.

    :param dialect_name: The hook's: ``postgresql``, ``mysql``/``mariadb``; anything else gets
        SQLite's ``BEGIN IMMEDIATE``.
    :raises TimeoutError: naming the table, when another writer keeps it ``timeout`` seconds.
    """
    with engine.connect() as conn:
        if dialect_name == "postgresql":
            _lock_postgres(conn, table, timeout)
            yield conn
        elif dialect_name in MYSQL:
            name = _lock_mysql(conn, table, timeout)
            try:
                yield conn
            finally:
                try:
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                    conn.commit()
                except Exception:  # the session's end releases it anyway
                    log.warning("Could not release lock %s", name, exc_info=True)
        else:
            _lock_sqlite(conn, table, timeout)
            yield conn


def _lock_postgres(conn: Connection, table: TableName, timeout: float) -> None:
    """A transaction-level advisory lock keyed by the table: released by commit, rollback or a
    dropped connection. Polled, so the wait is bounded without changing the session's settings."""
    schema = table.schema or conn.exec_driver_sql("SELECT current_schema()").scalar() or ""
    digest = hashlib.sha256(f"airflow_provider_smspartner:{schema}.{table.name}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    query = sa.text("SELECT pg_try_advisory_xact_lock(:key)")
    _poll(lambda: bool(conn.execute(query, {"key": key}).scalar_one()), table, timeout)


def _lock_mysql(conn: Connection, table: TableName, timeout: float) -> str:
    """``GET_LOCK``, named after the database and table, held by the session until released
    (or the connection drops). Returns the lock's name."""
    database = table.schema or conn.exec_driver_sql("SELECT DATABASE()").scalar() or ""
    digest = hashlib.sha256(f"{database}.{table.name}".encode()).hexdigest()[:40]
    name = f"smspartner:{digest}"  # GET_LOCK names stop at 64 characters
    query = sa.text("SELECT GET_LOCK(:name, 0)")
    _poll(lambda: conn.execute(query, {"name": name}).scalar() == 1, table, timeout)
    # Start afresh: what follows must see what the previous holder committed.
    conn.commit()
    return name


def _lock_sqlite(conn: Connection, table: TableName, timeout: float) -> None:
    """``BEGIN IMMEDIATE``: the database's write lock, for the whole transaction (SQLite has
    transactional DDL, so table and staging creation are inside it)."""
    conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except sa.exc.OperationalError as exc:
        if "locked" not in str(exc.orig):
            raise
        raise lock_timeout_error(table, timeout) from None


def _poll(try_lock: Callable[[], bool], table: TableName, timeout: float) -> None:
    """Call ``try_lock`` until it takes the lock, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    if try_lock():
        return
    log.info("Waiting for another writer of %s to finish (at most %g s)", table, timeout)
    while not try_lock():
        if time.monotonic() >= deadline:
            raise lock_timeout_error(table, timeout)
        time.sleep(_POLL_SECONDS)


def lock_timeout_error(table: TableName, timeout: float) -> TimeoutError:
    """What a writer raises when another kept ``table``'s lock ``timeout`` seconds."""
    return TimeoutError(
        f"Another run is writing table {table} and kept its lock for more than "
        f"{timeout:g} s; nothing was written. Run the writers of one table one at a time "
        "(e.g. max_active_tis_per_dag=1), or retry."
    )
