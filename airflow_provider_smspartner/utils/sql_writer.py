"""Writes DataFrames into a table of any DbApiHook database: the provider's one warehouse writer.

Used by the stop-list transfer (replace / upsert / append) and by the bulk operators' results
tables. Statements are SQLAlchemy Core built on the hook's engine (``get_sqlalchemy_engine``):
tables, indexes, quoting, null-safe comparison and per-database types come from SQLAlchemy.
The load path follows ``hook.dialect_name``:

* ``postgresql``: ``COPY`` of Arrow-written CSV on the SQLAlchemy connection's driver connection;
* ``mysql`` / ``mariadb`` and ``sqlite``: chunked ``executemany`` of a Core ``INSERT``;
* anything else: ``DbApiHook.insert_rows(..., executemany=True)`` into a staging table.

``replace`` and ``insert`` load straight into the target inside one transaction; ``upsert`` and
``append`` (and every mode on the generic path) load a staging table and apply set-based
statements to the target in one transaction. Either way a failure leaves the target as it was,
and readers see the old rows until the commit.

The keyed modes (``replace``/``upsert``/``append``) hold a per-table lock for the whole write, so
two writers of one table run one after the other instead of interleaving: a transaction-level
advisory lock on PostgreSQL (the write is one transaction there, staging table included), a
``GET_LOCK`` named after the table on MySQL/MariaDB (held by the session across the staging DDL,
which MySQL commits on its own), ``BEGIN IMMEDIATE`` on SQLite (one transaction too). A writer
that cannot get the lock within ``lock_timeout`` raises ``TimeoutError`` naming the table. Their
staging table has one fixed name per target (:func:`staging_name`), dropped first by every run:
a crash leaves at most one (only on MySQL/MariaDB, whose DDL is not transactional, and on the
generic path), and the next run removes it. Databases without a fast path get no lock.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator, TypeEngine

from airflow_provider_smspartner.utils.arguments import DEFAULT_CHUNK_SIZE

log = logging.getLogger(__name__)

ColumnType = Literal["bigint", "int", "short_text", "text", "long_text", "timestamp"]
WriteMode = Literal["replace", "upsert", "append", "insert"]
LoadPath = Literal["copy", "executemany", "insert_rows"]
_MAX_IDENTIFIER = 63  # PostgreSQL's limit (MySQL's is 64)
_IDENTIFIER = re.compile(rf"^[A-Za-z_][A-Za-z0-9_]{{0,{_MAX_IDENTIFIER - 1}}}$")
#: Ends the name of a keyed write's staging table (see :func:`staging_name`).
STAGING_SUFFIX = "__stg_smspartner"
#: Seconds a keyed write waits for another writer of the same table before it gives up.
DEFAULT_LOCK_TIMEOUT = 600.0
_LOCK_POLL_SECONDS = 0.2
#: How SQLite stores UTC instants (it has no timestamp type); this text sorts chronologically.
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_MYSQL = ("mysql", "mariadb")  # SQLAlchemy's names for MySQL and MariaDB
#: ``hook.dialect_name`` -> load path; any other database takes ``insert_rows``.
_LOAD_PATHS: dict[str, LoadPath] = {
    "postgresql": "copy",
    **dict.fromkeys(_MYSQL, "executemany"),
    "sqlite": "executemany",
}


@dataclass(frozen=True)
class Column:
    """A column of a managed table: name, portable type, and whether it may be NULL."""

    name: str
    type: ColumnType
    nullable: bool = True


@dataclass(frozen=True)
class TableSpec:
    """The shape of a managed table.

    :param columns: Columns in order.
    :param key: Unique key column (required by ``replace``/``upsert``/``append``).
    :param indexes: Columns that get a secondary index when the table is created.
    :param compared: Columns whose change makes ``upsert`` update a row.
    :param soft_delete: Column set to the write time when a key leaves the source in ``upsert``,
        and cleared when it comes back.
    """

    columns: tuple[Column, ...]
    key: str | None = None
    indexes: tuple[str, ...] = ()
    compared: tuple[str, ...] = ()
    soft_delete: str | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class TableName:
    """A validated, optionally schema-qualified table name."""

    name: str
    schema: str | None = None

    @classmethod
    def parse(cls, table: str) -> TableName:
        """Validate ``table`` (``name`` or ``schema.name``); identifiers only, so no SQL can slip in.

        :raises ValueError: naming the table and the rule it breaks.
        """
        if not isinstance(table, str) or not table.strip():
            raise ValueError(f"Table name must be a non-empty string, got {table!r}.")
        parts = table.strip().split(".")
        if len(parts) > 2 or not all(_IDENTIFIER.match(p) for p in parts):
            raise ValueError(
                f"Invalid table name {table!r}: use 'table' or 'schema.table' with letters, digits and "
                "underscores only (starting with a letter or underscore, at most 63 characters each)."
            )
        return cls(name=parts[-1], schema=parts[0] if len(parts) == 2 else None)

    def with_name(self, name: str) -> TableName:
        return TableName(name=name, schema=self.schema)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True)
class RemovalCounts:
    """What a ``replace``/``upsert`` is about to do to the live rows, handed to its ``guard``.

    Counted inside the write's transaction, under its lock, before the target changes: a guard
    that raises leaves the table as it was.

    :param live: Rows live now (the spec's ``soft_delete`` column empty; every row without one).
    :param removed: Of those, rows the write would delete (``replace``) or soft-delete (``upsert``).
    :param incoming: Rows in the new data.
    """

    live: int
    removed: int
    incoming: int


#: Called with the counts before the target changes; raises to refuse the write.
Guard = Callable[[RemovalCounts], None]


@dataclass
class WriteSummary:
    """What a write did: rows ``inserted``, ``updated`` (changed or back on the list), ``removed``."""

    inserted: int = 0
    updated: int = 0
    removed: int = 0
    created_table: bool = False


# ---------------------------------------------------------------------------------------- types
def _utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; naive values are taken to be UTC already."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class _IsoUtcText(TypeDecorator[datetime]):
    """SQLite's timestamps: UTC instants as ``YYYY-MM-DDTHH:MM:SSZ`` text."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> str | None:
        return None if value is None else _utc(value).strftime(ISO_FORMAT)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # fromisoformat takes "Z" only from Python 3.11 on.
        return _utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))


class _NaiveUtcDatetime(TypeDecorator[datetime]):
    """MySQL/MariaDB timestamps: ``DATETIME(6)`` holding naive UTC (``TIMESTAMP`` ends in 2038)."""

    impl = mysql.DATETIME
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else _utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


def staging_name(table: TableName) -> TableName:
    """The staging table of a keyed write into ``table``: one fixed name per target, so a run finds
    and drops what a crashed run left. Within 63 characters; a long name is cut and given a hash of
    the whole, so two long names that share a prefix never share a staging table."""
    name = table.name + STAGING_SUFFIX
    if len(name) > _MAX_IDENTIFIER:
        digest = hashlib.sha256(table.name.encode()).hexdigest()[:8]
        keep = _MAX_IDENTIFIER - len(STAGING_SUFFIX) - len(digest) - 1
        name = f"{table.name[:keep]}_{digest}{STAGING_SUFFIX}"
    return table.with_name(name)


def _sql_type(kind: ColumnType) -> TypeEngine[Any]:
    """The SQLAlchemy type of a portable column type, with its per-database variants."""
    if kind == "bigint":
        # SQLite: only a column declared INTEGER PRIMARY KEY becomes the rowid (no separate index).
        return sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    if kind == "int":
        return sa.Integer()
    if kind == "short_text":
        return sa.String(64)
    if kind == "text":
        # TEXT is not portable (CLOB on some databases); the generic path keeps a bounded VARCHAR.
        return sa.String(2000).with_variant(sa.Text(), "postgresql", *_MYSQL, "sqlite")
    if kind == "long_text":
        # Whatever length a source may send: MySQL's TEXT stops at 64 KiB, LONGTEXT at 4 GiB.
        return (
            sa.String(2000)
            .with_variant(sa.Text(), "postgresql", "sqlite")
            .with_variant(mysql.LONGTEXT(), *_MYSQL)
        )
    return (
        sa.DateTime(timezone=True)
        .with_variant(_NaiveUtcDatetime(fsp=6), *_MYSQL)
        .with_variant(_IsoUtcText(), "sqlite")
    )


# ---------------------------------------------------------------------------------------- hooks
def resolve_dbapi_hook(conn_id: str) -> Any:
    """Return the ``DbApiHook`` of connection ``conn_id`` (any SQL provider installed).

    :raises ValueError: when the connection's hook is not a SQL (DbApiHook) hook.
    """
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    hook = conn.get_hook()
    if not isinstance(hook, DbApiHook):
        raise ValueError(
            f"Connection {conn_id!r} is of type {conn.conn_type!r}, whose hook {type(hook).__name__} is not a "
            "SQL database hook (DbApiHook); point the operator at a SQL connection (sqlite, postgres, mysql, ...)."
        )
    return hook


# ---------------------------------------------------------------------------------------- writer
class SqlTableWriter:
    """Writes DataFrames shaped like ``spec`` into ``table`` through ``hook``.

    :param hook: Any ``DbApiHook`` (common-sql >= 1.22, for ``dialect_name``).
    :param table: Target table, ``name`` or ``schema.name`` (validated before any SQL).
    :param spec: The table's columns, key and upsert rules.
    :param chunk_size: Rows per load chunk; bounds memory to one chunk besides the frame.
    :param lock_timeout: Seconds a keyed write waits for another writer of the table to finish.

    Attributes: ``table`` (the validated :class:`TableName`), ``dialect_name`` (the hook's),
    ``sql_table`` (the target as a ``sqlalchemy.Table`` in the writer's own ``MetaData``).
    """

    def __init__(
        self,
        hook: Any,
        table: str,
        spec: TableSpec,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self.hook = hook
        self.table = TableName.parse(table)
        self.spec = spec
        self.chunk_size = chunk_size
        self.lock_timeout = lock_timeout
        self.dialect_name: str = hook.dialect_name
        self.load_path: LoadPath = _LOAD_PATHS.get(self.dialect_name, "insert_rows")
        self.metadata = sa.MetaData()
        self.sql_table = self._define(self.table, indexes=True)

    @cached_property
    def engine(self) -> Engine:
        """The hook's engine. No pool: a write is a few transactions, and each connection closes after."""
        return self.hook.get_sqlalchemy_engine(engine_kwargs={"poolclass": NullPool})

    @cached_property
    def staging_table(self) -> sa.Table:
        """The keyed modes' staging table (:func:`staging_name`), shaped like the target, no index."""
        return self._define(staging_name(self.table), indexes=False)

    # ------------------------------------------------------------------ public
    def write(
        self,
        frame: pd.DataFrame,
        mode: WriteMode,
        now: datetime | None = None,
        guard: Guard | None = None,
    ) -> WriteSummary:
        """Write ``frame`` in ``mode`` and return what changed.

        ``replace``: the table ends up holding exactly ``frame``; ``upsert``: new keys inserted,
        changed rows updated, keys absent from ``frame`` soft-deleted (``now``, default the current
        time, in the spec's ``soft_delete`` column); ``append``: only keys not yet in the table;
        ``insert``: every row, no key check (results tables).

        :param guard: ``replace``/``upsert`` only: called with the :class:`RemovalCounts` inside
            the write's transaction, under the table's lock, before the target changes; whatever
            it raises aborts the write and leaves the table as it was.
        :raises ValueError: a column missing from ``frame``, or a key value repeated in it.
        :raises TimeoutError: another writer held the table's lock for ``lock_timeout`` seconds.
        """
        missing = [c for c in self.spec.names if c not in frame.columns]
        if missing:
            raise ValueError(f"DataFrame lacks column(s) {missing} needed by table {self.table}.")
        if mode == "insert":
            return self._insert(frame)
        if not self.spec.key:
            raise ValueError(f"Mode {mode!r} needs a key column in the table spec.")
        self._check_unique_keys(frame)
        now = now or datetime.now(timezone.utc)
        if self.load_path == "insert_rows":
            return self._write_generic(frame, mode, now, guard)
        return self._write_locked(frame, mode, now, guard)

    def ensure_table(self) -> bool:
        """Create the table (with its key and indexes) unless it exists; check its columns. True if created.

        An existence check that fails (no privilege, lost connection) raises its own error: it is
        never taken for a missing table.
        """
        with self.engine.begin() as conn:
            return self._ensure(conn)

    def read_frame(self) -> pd.DataFrame:
        """Read the spec's columns of the whole table back, timestamps as UTC (for tests and small tables)."""
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(self.sql_table), conn)

    # ------------------------------------------------------------------ modes
    def _insert(self, frame: pd.DataFrame) -> WriteSummary:
        """Every row of ``frame``, no key: straight into the target, or through a staging table of
        its own on the generic path (writers of one results table run side by side: no lock)."""
        summary = WriteSummary(created_table=self.ensure_table())
        if frame.empty:
            return summary
        if self.load_path != "insert_rows":
            with self.engine.begin() as conn:
                self._load(conn, frame, self.sql_table)
            summary.inserted = len(frame)
            return summary
        name = self.table.with_name(f"{self.table.name[:40]}__stg_{uuid.uuid4().hex[:8]}")
        staging = self._define(name, indexes=False)
        with self.engine.begin() as conn:
            self._create(conn, staging)
        try:
            self._insert_rows(frame, staging)
            with self.engine.begin() as conn:
                conn.execute(self._copy_rows(staging))
            summary.inserted = len(frame)
        finally:
            self._drop(staging)
            self.metadata.remove(staging)
        return summary

    def _write_locked(
        self, frame: pd.DataFrame, mode: WriteMode, now: datetime, guard: Guard | None
    ) -> WriteSummary:
        """A keyed write on a fast path, under the table's lock.

        PostgreSQL and SQLite: one transaction, table creation and staging table included, so a
        crash leaves nothing behind. MySQL/MariaDB commit DDL on their own: the staging table is
        created before the transaction that loads and applies it, and dropped after it, the
        session's lock held throughout.
        """
        summary = WriteSummary()
        staging = None if mode == "replace" else self.staging_table
        transactional_ddl = self.dialect_name not in _MYSQL
        with self._locked() as conn:
            try:
                summary.created_table = self._ensure(conn)
                if staging is None:
                    self._replace(conn, frame, summary, guard)
                else:
                    staging.drop(conn, checkfirst=True)  # what a crashed run left
                    self._create(conn, staging)
                    self._load(conn, frame, staging)
                    self._apply(conn, staging, mode, now, summary, guard, len(frame))
                    if transactional_ddl:
                        staging.drop(conn)
                conn.commit()
            except BaseException:
                # Before any DROP: MySQL would commit the open transaction ahead of it.
                try:
                    conn.rollback()
                except Exception:  # a dead connection rolls back on the server's side
                    log.warning("Rollback failed on %s", self.table, exc_info=True)
                raise
            finally:
                if staging is not None and not transactional_ddl:
                    self._drop(staging, conn)
        return summary

    def _write_generic(
        self, frame: pd.DataFrame, mode: WriteMode, now: datetime, guard: Guard | None
    ) -> WriteSummary:
        """A keyed write through ``insert_rows`` (which commits as it goes) into the staging table,
        then one transaction on the target. No portable lock: one writer per table at a time."""
        summary = WriteSummary(created_table=self.ensure_table())
        staging = self.staging_table
        with self.engine.begin() as conn:
            staging.drop(conn, checkfirst=True)  # what a crashed run left
            self._create(conn, staging)
        try:
            self._insert_rows(frame, staging)
            with self.engine.begin() as conn:
                self._apply(conn, staging, mode, now, summary, guard, len(frame))
        finally:
            self._drop(staging)
        return summary

    def _check_unique_keys(self, frame: pd.DataFrame) -> None:
        keys = frame[self._key]
        if keys.is_unique:
            return
        repeated = keys[keys.duplicated()]
        if len(repeated):
            examples = ", ".join(str(v) for v in sorted(set(repeated.tolist()))[:5])
            raise ValueError(
                f"Key column {self._key!r} repeats {len(repeated)} value(s) in the data for table "
                f"{self.table} (e.g. {examples}); each key must appear once."
            )

    # ------------------------------------------------------------------ lock
    @contextmanager
    def _locked(self) -> Iterator[Connection]:
        """A connection holding the table's write lock, with a transaction open under it.

        :raises TimeoutError: naming the table, when another writer keeps it ``lock_timeout`` seconds.
        """
        with self.engine.connect() as conn:
            if self.dialect_name == "postgresql":
                self._lock_postgres(conn)
                yield conn
            elif self.dialect_name in _MYSQL:
                name = self._lock_mysql(conn)
                try:
                    yield conn
                finally:
                    try:
                        conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                        conn.commit()
                    except Exception:  # the session's end releases it anyway
                        log.warning("Could not release lock %s", name, exc_info=True)
            else:
                self._lock_sqlite(conn)
                yield conn

    def _lock_postgres(self, conn: Connection) -> None:
        """A transaction-level advisory lock keyed by the table: released by commit, rollback or a
        dropped connection. Polled, so the wait is bounded without changing the session's settings."""
        schema = self.table.schema or conn.exec_driver_sql("SELECT current_schema()").scalar() or ""
        digest = hashlib.sha256(f"airflow_provider_smspartner:{schema}.{self.table.name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        query = sa.text("SELECT pg_try_advisory_xact_lock(:key)")
        self._poll_lock(lambda: bool(conn.execute(query, {"key": key}).scalar_one()))

    def _lock_mysql(self, conn: Connection) -> str:
        """``GET_LOCK``, named after the database and table, held by the session until released
        (or the connection drops). Returns the lock's name."""
        database = self.table.schema or conn.exec_driver_sql("SELECT DATABASE()").scalar() or ""
        digest = hashlib.sha256(f"{database}.{self.table.name}".encode()).hexdigest()[:40]
        name = f"smspartner:{digest}"  # GET_LOCK names stop at 64 characters
        query = sa.text("SELECT GET_LOCK(:name, 0)")
        self._poll_lock(lambda: conn.execute(query, {"name": name}).scalar() == 1)
        # Start afresh: what follows must see what the previous holder committed.
        conn.commit()
        return name

    def _lock_sqlite(self, conn: Connection) -> None:
        """``BEGIN IMMEDIATE``: the database's write lock, for the whole transaction (SQLite has
        transactional DDL, so table and staging creation are inside it)."""
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except sa.exc.OperationalError as exc:
            if "locked" not in str(exc.orig):
                raise
            raise self._lock_timeout_error() from None

    def _poll_lock(self, try_lock: Callable[[], bool]) -> None:
        """Call ``try_lock`` until it takes the lock, for at most ``lock_timeout`` seconds."""
        deadline = time.monotonic() + self.lock_timeout
        if try_lock():
            return
        log.info("Waiting for another writer of %s to finish (at most %g s)", self.table, self.lock_timeout)
        while not try_lock():
            if time.monotonic() >= deadline:
                raise self._lock_timeout_error()
            time.sleep(_LOCK_POLL_SECONDS)

    def _lock_timeout_error(self) -> TimeoutError:
        return TimeoutError(
            f"Another run is writing table {self.table} and kept its lock for more than "
            f"{self.lock_timeout:g} s; nothing was written. Run the writers of one table one at a time "
            "(e.g. max_active_tis_per_dag=1), or retry."
        )

    # ------------------------------------------------------------------ DDL
    def _ensure(self, conn: Connection) -> bool:
        """:meth:`ensure_table` on ``conn`` (inside its transaction where the database allows)."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(self.table.name, schema=self.table.schema):
            self._create(conn, self.sql_table)
            log.info("Created table %s", self.table)
            return True
        existing = {
            str(c["name"]).lower() for c in inspector.get_columns(self.table.name, schema=self.table.schema)
        }
        missing = [c for c in self.spec.names if c.lower() not in existing]
        if missing:
            raise ValueError(
                f"Table {self.table} exists but lacks column(s) {missing}; drop it or choose another table."
            )
        return False

    def _define(self, name: TableName, indexes: bool) -> sa.Table:
        """``spec`` as a Table named ``name`` in the writer's MetaData; the key is the primary key."""
        key = self.spec.key
        table = sa.Table(
            name.name,
            self.metadata,
            *(
                sa.Column(
                    c.name,
                    _sql_type(c.type),
                    primary_key=c.name == key,
                    nullable=c.nullable and c.name != key,
                    autoincrement=False,  # keys come from the data: no SERIAL / AUTO_INCREMENT
                )
                for c in self.spec.columns
            ),
            schema=name.schema,
            # Any text a source sends, whatever the database's default (often latin1 or utf8mb3).
            mysql_charset="utf8mb4",
        )
        if indexes:
            for column in self.spec.indexes:
                sa.Index(f"{name.name[:40]}_{column}_idx", table.c[column])
        return table

    def _create(self, conn: Connection, table: sa.Table) -> None:
        table.create(conn)

    def _drop(self, table: sa.Table, conn: Connection | None = None) -> None:
        """Drop a staging table if it exists, on ``conn`` or in a transaction of its own; a failure is
        logged, not raised (the original error matters more, and the next run drops it)."""
        try:
            if conn is None:
                with self.engine.begin() as own:
                    table.drop(own, checkfirst=True)
            else:
                table.drop(conn, checkfirst=True)
                conn.commit()
        except Exception:
            log.warning("Could not drop staging table %s", table.fullname, exc_info=True)

    # ------------------------------------------------------------------ load
    def _load(self, conn: Connection, frame: pd.DataFrame, table: sa.Table) -> None:
        """Bulk-load ``frame`` into ``table`` on ``conn`` (inside its transaction, no commit)."""
        if frame.empty:
            return
        if self.load_path == "copy":
            self._copy(conn, frame, table)
        else:
            self._executemany(conn, frame, table)

    def _executemany(self, conn: Connection, frame: pd.DataFrame, table: sa.Table) -> None:
        """A Core ``INSERT``, compiled once, run as one executemany per chunk of ready driver values.

        Binding row by row through SQLAlchemy's parameter processing would cost twice the load itself.
        """
        insert = sa.insert(table).compile(dialect=conn.dialect, column_keys=self.spec.names)
        order = list(insert.positiontup or ()) if insert.positional else None
        for chunk in self._chunks(frame):
            columns = dict(zip(self.spec.names, self._driver_columns(chunk), strict=True))
            rows: list[Any]
            if order is None:  # named paramstyle
                rows = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
            else:
                rows = list(zip(*(columns[name] for name in order), strict=True))
            conn.exec_driver_sql(str(insert), rows)

    def _copy(self, conn: Connection, frame: pd.DataFrame, table: sa.Table) -> None:
        """PostgreSQL ``COPY`` on the driver connection under ``conn``, so it joins its transaction."""
        quote = conn.dialect.identifier_preparer
        columns = ", ".join(quote.quote(n) for n in self.spec.names)
        sql = f"COPY {quote.format_table(table)} ({columns}) FROM STDIN WITH (FORMAT csv)"
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute("SET LOCAL TIME ZONE 'UTC'")  # the CSV's timestamps carry no offset
            if hasattr(cursor, "copy"):  # psycopg 3
                with cursor.copy(sql) as copy:
                    for chunk in self._chunks(frame):
                        copy.write(copy_csv(chunk, self.spec))
            else:  # psycopg2
                for chunk in self._chunks(frame):
                    cursor.copy_expert(sql, io.BytesIO(copy_csv(chunk, self.spec)))
        finally:
            cursor.close()

    def _insert_rows(self, frame: pd.DataFrame, table: sa.Table) -> None:
        """Generic path: ``hook.insert_rows`` into ``table`` (it commits every chunk: staging only)."""
        if frame.empty:
            return
        quote = self.engine.dialect.identifier_preparer

        def rows() -> Iterator[tuple[Any, ...]]:
            for chunk in self._chunks(frame):
                yield from zip(*self._driver_columns(chunk), strict=True)

        self.hook.insert_rows(
            quote.format_table(table),
            rows(),
            target_fields=[quote.quote(n) for n in self.spec.names],
            commit_every=self.chunk_size,
            executemany=True,
        )

    def _chunks(self, frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
        for start in range(0, len(frame), self.chunk_size):
            yield frame.iloc[start : start + self.chunk_size]

    def _driver_columns(self, chunk: pd.DataFrame) -> list[list[Any]]:
        """The chunk's columns as the driver takes them, None for missing.

        Timestamps take the form their column type binds on this engine (see ``_sql_type``), made
        for the whole column at once.
        """
        engine_dialect = self.engine.dialect.name
        columns = []
        for column in self.spec.columns:
            series = chunk[column.name]
            if column.type == "timestamp":
                columns.append(_timestamp_values(series, engine_dialect))
            elif column.type in ("bigint", "int"):
                columns.append([None if pd.isna(v) else int(v) for v in series.astype(object)])
            else:
                columns.append([None if _missing(v) else str(v) for v in series])
        return columns

    # ------------------------------------------------------------------ apply
    def _replace(
        self, conn: Connection, frame: pd.DataFrame, summary: WriteSummary, guard: Guard | None
    ) -> None:
        """Empty the target and load ``frame`` on ``conn``: readers see the old rows until commit.

        The counts come from comparing key sets, the old ones read in the same transaction.
        """
        key, soft, target = self._key, self.spec.soft_delete, self.sql_table
        old_keys = _fetch_column(conn, sa.select(target.c[key]))
        new_keys = frame[key].to_numpy()
        kept = len(np.intersect1d(old_keys, new_keys, assume_unique=True))  # keys are unique
        summary.inserted = len(new_keys) - kept
        summary.removed = len(old_keys) - kept
        if guard is not None:
            live_keys, live_kept = old_keys, kept
            if soft and self._count(conn, target, target.c[soft].is_not(None)):
                live_keys = _fetch_column(conn, sa.select(target.c[key]).where(target.c[soft].is_(None)))
                live_kept = len(np.intersect1d(live_keys, new_keys, assume_unique=True))
            guard(RemovalCounts(len(live_keys), len(live_keys) - live_kept, len(new_keys)))
        conn.execute(sa.delete(target))
        self._load(conn, frame, target)

    def _apply(
        self,
        conn: Connection,
        staging: sa.Table,
        mode: WriteMode,
        now: datetime,
        summary: WriteSummary,
        guard: Guard | None,
        incoming: int,
    ) -> None:
        """Set-based statements from ``staging`` to the target, counts and guard first (on ``conn``,
        no commit)."""
        target, soft = self.sql_table, self.spec.soft_delete
        is_new, changed, gone = self._conditions(staging, mode)
        summary.inserted = self._count(conn, staging, is_new)
        if mode == "append":
            conn.execute(self._copy_rows(staging, is_new))
            return
        summary.updated = self._count(conn, target, changed)
        summary.removed = self._count(conn, target, gone)
        if guard is not None:
            live = target.c[soft].is_(None) if soft else sa.true()
            # upsert's ``gone`` already counts live rows only.
            removed = summary.removed if mode == "upsert" and soft else self._count(conn, target, gone & live)
            guard(RemovalCounts(self._count(conn, target, live), removed, incoming))
        if mode == "replace":
            conn.execute(sa.delete(target))
            conn.execute(self._copy_rows(staging))
            return
        # upsert: update changed rows (clearing the soft delete), add new ones, then stamp the gone.
        key = self._key
        same_key = staging.c[key] == target.c[key]
        updates: dict[str, Any] = {
            n: sa.select(staging.c[n]).where(same_key).scalar_subquery()
            for n in self.spec.names
            if n not in (key, soft)
        }
        if soft:
            updates[soft] = sa.null()
        conn.execute(sa.update(target).where(changed).values(updates))
        conn.execute(self._copy_rows(staging, is_new))
        if soft:
            conn.execute(sa.update(target).where(gone).values({soft: now}))

    def _conditions(self, staging: sa.Table, mode: WriteMode) -> tuple[Any, Any, Any]:
        """``(is_new, changed, gone)``: staging rows whose key the target lacks; target rows whose
        compared columns differ from staging (NULL-safe) or that come back from a soft delete;
        target rows whose key staging lacks (and, in ``upsert``, not soft-deleted yet)."""
        target, key, soft = self.sql_table, self._key, self.spec.soft_delete
        same_key = staging.c[key] == target.c[key]
        is_new = ~sa.exists().where(same_key)
        differs = [staging.c[c].is_distinct_from(target.c[c]) for c in self.spec.compared]
        if soft:
            differs.append(target.c[soft].is_not(None))
        changed = sa.exists().where(same_key, sa.or_(*differs)) if differs else sa.false()
        gone = ~sa.exists().where(same_key)
        if soft and mode == "upsert":
            gone = sa.and_(gone, target.c[soft].is_(None))
        return is_new, changed, gone

    def _copy_rows(self, staging: sa.Table, where: Any = None) -> sa.Insert:
        """``INSERT INTO target SELECT ... FROM staging [WHERE where]``."""
        rows = sa.select(*(staging.c[n] for n in self.spec.names))
        return sa.insert(self.sql_table).from_select(
            self.spec.names, rows if where is None else rows.where(where)
        )

    @property
    def _key(self) -> str:
        """The key column; ``write`` checked that keyed modes have one."""
        return self.spec.key or ""

    @staticmethod
    def _count(conn: Connection, table: sa.Table, where: Any = None) -> int:
        query = sa.select(sa.func.count()).select_from(table)
        return int(conn.execute(query if where is None else query.where(where)).scalar_one())


def _fetch_column(conn: Connection, query: sa.Select[Any]) -> np.ndarray:
    """The one column of ``query`` (no parameters) as an array, read on the DBAPI cursor of ``conn``.

    SQLAlchemy's per-row result processing would triple the time on a million keys.
    """
    cursor = conn.connection.cursor()
    try:
        cursor.execute(str(query.compile(conn)))
        return np.asarray([row[0] for row in cursor.fetchall()])
    finally:
        cursor.close()


def _timestamp_values(series: pd.Series, engine_dialect: str) -> list[Any]:
    """UTC instants as the timestamp column of ``engine_dialect`` binds them, None for missing."""
    stamps = pd.to_datetime(series, utc=True)
    if engine_dialect == "sqlite":
        text = stamps.dt.strftime(ISO_FORMAT)  # as _IsoUtcText
        return [None if missing else v for v, missing in zip(text.tolist(), stamps.isna(), strict=True)]
    # numpy turns datetime64[us] into datetime objects and NaT into None.
    naive = stamps.dt.tz_convert(None).to_numpy("datetime64[us]").astype(object).tolist()
    if engine_dialect in _MYSQL:
        return naive  # as _NaiveUtcDatetime
    return [None if v is None else v.replace(tzinfo=timezone.utc) for v in naive]


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def copy_csv(chunk: pd.DataFrame, spec: TableSpec) -> bytes:
    """PostgreSQL CSV for ``chunk``: nulls as unquoted empty fields, timestamps as UTC text.

    Arrow writes the CSV (an order of magnitude faster than ``DataFrame.to_csv``), but its own
    timestamp formatting is slow, so timestamps are pre-formatted by numpy without an offset;
    the COPY runs under ``SET LOCAL TIME ZONE 'UTC'``.
    """
    arrays = {}
    for column in spec.columns:
        values = chunk[column.name]
        if column.type == "timestamp":
            stamps = pd.to_datetime(values, utc=True).dt.tz_convert(None).to_numpy("datetime64[us]")
            arrays[column.name] = _timestamps_as_text(stamps)
        elif column.type in ("short_text", "text", "long_text"):
            # Text columns may hold mixed Python types (raw inputs): send their text, as the
            # executemany path does.
            # The mask keeps missing values NULL: pandas 2's astype(str) would write "None".
            arrays[column.name] = pa.array(
                values.astype(str).to_numpy(dtype=object), type=pa.string(), mask=values.isna().to_numpy()
            )
        else:
            arrays[column.name] = pa.array(values, from_pandas=True)
    buffer = pa.BufferOutputStream()
    pa_csv.write_csv(pa.table(arrays), buffer, write_options=pa_csv.WriteOptions(include_header=False))
    return buffer.getvalue().to_pybytes()


def _timestamps_as_text(stamps: np.ndarray) -> pa.Array:
    """ISO-8601 text (no offset) for naive UTC ``datetime64[us]`` values; NaT becomes null.

    Columns stamped once per run (``extracted_at``) or empty (``removed_at``) are constant, so
    they are formatted once instead of per row.
    """
    missing = np.isnat(stamps)
    if missing.all():
        return pa.nulls(len(stamps), pa.string())
    present = stamps[~missing]
    if not missing.any() and (present == present[0]).all():
        return pa.array(np.full(len(stamps), np.datetime_as_string(present[0], unit="us")))
    return pa.array(np.datetime_as_string(stamps, unit="us"), mask=missing)
