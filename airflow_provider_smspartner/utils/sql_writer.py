"""Writes DataFrames into a table of any DbApiHook database: the provider's one warehouse writer.

Used by the stop-list transfer (replace / upsert / append, plus its run log) and by the bulk
operators' results tables. Statements are SQLAlchemy Core built on the hook's engine
(``get_sqlalchemy_engine``): tables, indexes, quoting, null-safe comparison and per-database types
come from SQLAlchemy. The load path follows ``hook.dialect_name``:

* ``postgresql``: binary ``COPY`` (CSV for a table whose column types differ from the writer's)
  on the SQLAlchemy connection's driver connection, the next chunk encoded in a thread while the
  database takes the current one;
* ``mysql`` / ``mariadb`` and ``sqlite``: chunked ``executemany`` of a Core ``INSERT``;
* anything else: ``DbApiHook.insert_rows(..., executemany=True)`` into a staging table.

``replace`` and ``insert`` load straight into the target inside one transaction; ``upsert`` and
``append`` (and every mode on the generic path) load a staging table (a temporary table on
PostgreSQL: no write-ahead log) and apply set-based statements to the target in one transaction.
Either way a failure leaves the target as it was. :meth:`SqlTableWriter.write_chunks` streams: it
loads an iterable of frames one at a time into the staging table, then applies any mode from
there, so memory holds one chunk; :func:`table_spec_for` infers a spec from a frame's dtypes.

``replace`` reads the target's keys (and the spec's ``first_seen`` column, which keeps its value
for keys still present) in its transaction, then empties and reloads the target. On PostgreSQL it
takes the fastest way to the same end state: ``TRUNCATE``, drop the table's indexes, ``COPY``,
rebuild the indexes from their own definitions (same table, so views and grants survive; still
WAL-logged). ``TRUNCATE`` holds an ``ACCESS EXCLUSIVE`` lock until the commit: readers wait
during the load and the index build instead of seeing the old rows (:meth:`SqlTableWriter.write`).
A table that a foreign key references, that is partitioned, or that the writer's role does not
own (only an owner rebuilds indexes) is reloaded with ``DELETE`` + ``COPY`` instead, and readers
keep the old rows until the commit there and on the other databases.

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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator, TypeEngine

from airflow_provider_smspartner.utils.arguments import DEFAULT_CHUNK_SIZE
from airflow_provider_smspartner.utils.copy_encoding import (
    BINARY_PG_TYPES,
    BINARY_SIGNATURE,
    BINARY_TRAILER,
    PG_EPOCH_MICROS,
    copy_binary,
    copy_csv,
    naive_utc,
)
from airflow_provider_smspartner.utils.table_spec import (
    ISO_FORMAT,
    TEXT_TYPES,
    ColumnType,
    TableName,
    TableSpec,
    check_column_names,
    fit_identifier,
)

log = logging.getLogger(__name__)

WriteMode = Literal["replace", "upsert", "append", "insert"]
LoadPath = Literal["copy", "executemany", "insert_rows"]
#: Ends the name of a keyed write's staging table (see :func:`staging_name`).
STAGING_SUFFIX = "__stg_smspartner"
#: Seconds a keyed write waits for another writer of the same table before it gives up.
DEFAULT_LOCK_TIMEOUT = 600.0
_LOCK_POLL_SECONDS = 0.2
#: Memory a PostgreSQL keyed write allows itself, for its transaction only (never lowered): a
#: million keys hash (upsert's joins) and sort (replace's index builds) without temporary files.
#: ``temp_buffers`` keeps a million-row staging table in memory (it only takes effect in a session
#: that has not used a temporary table yet: the writer's connections are fresh).
_POSTGRES_MEMORY = {"work_mem": "256MB", "maintenance_work_mem": "256MB", "temp_buffers": "256MB"}
_MYSQL = ("mysql", "mariadb")  # SQLAlchemy's names for MySQL and MariaDB
#: ``hook.dialect_name`` -> load path; any other database takes ``insert_rows``.
_LOAD_PATHS: dict[str, LoadPath] = {
    "postgresql": "copy",
    **dict.fromkeys(_MYSQL, "executemany"),
    "sqlite": "executemany",
}


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
#: Called on the write's connection after the target changed, before the commit (e.g. a log row).
BeforeCommit = Callable[[Connection, "WriteSummary"], None]


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
    return table.with_name(fit_identifier(table.name, STAGING_SUFFIX))


def _sql_type(kind: ColumnType) -> TypeEngine[Any]:
    """The SQLAlchemy type of a portable column type, with its per-database variants."""
    if kind == "bigint":
        # SQLite: only a column declared INTEGER PRIMARY KEY becomes the rowid (no separate index).
        return sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    if kind == "int":
        return sa.Integer()
    if kind == "double":
        return sa.Double()  # DOUBLE PRECISION, DOUBLE, REAL: 8-byte floats everywhere
    if kind == "bool":
        return sa.Boolean()
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
    return resolve_dbapi_connection(conn_id)[1]


def resolve_dbapi_connection(conn_id: str) -> tuple[Any, Any]:
    """Return connection ``conn_id`` and its ``DbApiHook``, for callers that read the connection too.

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
    return conn, hook


# ---------------------------------------------------------------------------------------- writer
class SqlTableWriter:
    """Writes DataFrames shaped like ``spec`` into ``table`` through ``hook``.

    :param hook: Any ``DbApiHook`` (common-sql >= 1.22, for ``dialect_name``).
    :param table: Target table, ``name`` or ``schema.name`` (validated before any SQL).
    :param spec: The table's columns, key and upsert rules; column names the database cannot
        store as given are refused on construction (:func:`check_column_names`).
    :param chunk_size: Rows per load chunk; bounds memory to one chunk besides the frame.
    :param lock_timeout: Seconds a keyed write waits for another writer of the table to finish.
    :raises ValueError: an invalid table name, or a column name the database cannot store as
        given (naming the column, the database and the rule), before any SQL runs.

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
        # Before any SQL: a name the database would cut or reject must not create a table.
        check_column_names(spec.names, self.dialect_name, table=str(self.table))
        self.load_path: LoadPath = _LOAD_PATHS.get(self.dialect_name, "insert_rows")
        self.metadata = sa.MetaData()
        self.sql_table = self._define(self.table, indexes=True)

    @cached_property
    def engine(self) -> Engine:
        """The hook's engine. No pool: a write is a few transactions, and each connection closes after."""
        return self.hook.get_sqlalchemy_engine(engine_kwargs={"poolclass": NullPool})

    @cached_property
    def staging_table(self) -> sa.Table:
        """The keyed modes' staging table (:func:`staging_name`), shaped like the target, no index.

        On PostgreSQL and SQLite a temporary table, living in the write's session. PostgreSQL: its
        load writes no WAL. SQLite: it lives in the connection's own temporary database, so a
        large load never needs the main database's exclusive lock before the target changes
        (which a reader of that database, e.g. the source of a streamed write, would hold off).
        """
        return self._define(
            staging_name(self.table), indexes=False, temporary=self.dialect_name in ("postgresql", "sqlite")
        )

    # ------------------------------------------------------------------ public
    def write(
        self,
        frame: pd.DataFrame | Callable[[], pd.DataFrame],
        mode: WriteMode,
        now: datetime | None = None,
        guard: Guard | None = None,
        before_commit: BeforeCommit | None = None,
    ) -> WriteSummary:
        """Write ``frame`` in ``mode`` and return what changed.

        ``frame`` may be a callable that returns it (e.g. an API fetch): a keyed write on a fast
        path then runs it in a thread while it connects, takes the table's lock, creates the
        table if needed and reads what ``replace`` compares, so the client's work overlaps the
        database's; the table changes only once the frame is there. Whatever the callable raises
        aborts the write, which then changes nothing.

        ``replace``: the table ends up holding exactly ``frame``; ``upsert``: new keys inserted,
        changed rows updated, keys absent from ``frame`` soft-deleted (``now``, default the current
        time, in the spec's ``soft_delete`` column); ``append``: only keys not yet in the table;
        ``insert``: every row, no key check (results tables). The spec's ``first_seen`` column
        gets ``now`` on insert (unless ``frame`` holds it) and keeps its stored value otherwise.

        On PostgreSQL, ``replace`` empties the table with ``TRUNCATE`` (``ACCESS EXCLUSIVE`` lock):
        readers wait from then until the commit (the load and the index build: 2-3 s for a
        million rows on a small server) instead of reading the old rows.

        :param guard: ``replace``/``upsert`` only: called with the :class:`RemovalCounts` inside
            the write's transaction, under the table's lock, before the target changes; whatever
            it raises aborts the write and leaves the table as it was.
        :param before_commit: Keyed modes: called with the write's connection and summary after the
            target changed, before the commit, so what it writes commits (or rolls back) with
            the change. Must not run DDL (MySQL would commit the open transaction).
        :raises ValueError: a column missing from ``frame``, or a key value repeated in it.
        :raises TimeoutError: another writer held the table's lock for ``lock_timeout`` seconds.
        """
        now = now or datetime.now(timezone.utc)
        if mode != "insert" and not self.spec.key:
            raise ValueError(f"Mode {mode!r} needs a key column in the table spec.")
        if callable(frame) and mode != "insert" and self.load_path != "insert_rows":
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="smspartner-source") as source:
                return self._write_locked(source.submit(frame), mode, now, guard, before_commit)
        if callable(frame):
            frame = frame()
        frame = self._checked(frame, mode, now)
        if mode == "insert":
            return self._insert(frame)
        if self.load_path == "insert_rows":
            loaded = frame
            return self._write_generic(
                lambda staging: self._insert_rows(loaded, staging), mode, now, guard, before_commit
            )
        return self._write_locked(frame, mode, now, guard, before_commit)

    def write_chunks(
        self, chunks: Iterable[pd.DataFrame], mode: WriteMode, *, now: datetime | None = None
    ) -> WriteSummary:
        """Stream ``chunks`` into the table in ``mode`` and return what changed.

        The chunks are taken one at a time (memory holds one) and loaded into the staging table
        (``COPY`` on PostgreSQL, ``executemany`` on SQLite and MySQL/MariaDB, ``insert_rows``
        elsewhere); then set-based statements from staging apply the mode, in the one transaction
        that also holds the table's lock and creates the table when missing (PostgreSQL, SQLite;
        MySQL/MariaDB commit the DDL on their own). A failure, in a chunk's iterator too, leaves
        the table as it was.

        ``replace``: the table holds exactly the streamed rows (without a key: every row deleted,
        the new ones inserted; on PostgreSQL through ``TRUNCATE`` and index rebuilds, as
        :meth:`write`); ``upsert`` (needs a key): new keys inserted, changed rows updated, the
        spec's ``soft_delete`` column stamped with ``now`` for keys absent from the stream;
        ``append``: rows whose key is not in the table yet (every row without a key).

        :raises ValueError: an unknown mode, ``upsert`` without a key, a chunk lacking a column,
            or a key value repeated in the stream (within a chunk or across chunks), naming it.
        :raises TimeoutError: another writer held the table's lock for ``lock_timeout`` seconds.
        """
        if mode not in ("replace", "upsert", "append"):
            raise ValueError(f"write_chunks mode must be one of replace, upsert, append; got {mode!r}.")
        if mode == "upsert" and not self.spec.key:
            raise ValueError(f"Mode 'upsert' needs a key column in the table spec of {self.table}.")
        now = now or datetime.now(timezone.utc)
        staging = self.staging_table

        def fill(load: Callable[[pd.DataFrame], object]) -> int:
            rows = 0
            for chunk in chunks:
                checked = self._checked(chunk, mode if self.spec.key else "insert", now)
                load(checked)
                rows += len(checked)
            return rows

        if self.load_path == "insert_rows":
            return self._write_generic(
                lambda table: fill(lambda chunk: self._insert_rows(chunk, table)), mode, now, None, None
            )

        def work(conn: Connection, summary: WriteSummary) -> None:
            if self.dialect_name == "postgresql" and summary.created_table and not self.spec.first_seen:
                summary.inserted = self._load_new_postgres(conn, fill)
                return
            incoming = fill(lambda chunk: self._load_staging(conn, chunk, staging))
            self._apply(conn, staging, mode, now, summary, None, incoming)

        return self._locked_transaction(staging, work, None)

    def _checked(self, frame: pd.DataFrame, mode: WriteMode, now: datetime) -> pd.DataFrame:
        """``frame`` with the spec's ``first_seen`` column (``now`` when missing), checked: every
        column present, keys unique in the keyed modes."""
        first_seen = self.spec.first_seen
        if first_seen and first_seen not in frame.columns:
            frame = frame.assign(**{first_seen: pd.Series(_utc(now), index=frame.index)})
        missing = [c for c in self.spec.names if c not in frame.columns]
        if missing:
            raise ValueError(f"DataFrame lacks column(s) {missing} needed by table {self.table}.")
        if mode != "insert":
            self._check_unique_keys(frame)
        return frame

    def ensure_table(self) -> bool:
        """Create the table (with its key and indexes) unless it exists; check its columns. True if created.

        An existence check that fails (no privilege, lost connection) raises its own error: it is
        never taken for a missing table. Two writers creating the table at once are fine: the one
        whose ``CREATE`` fails finds the other's table and goes on.
        """
        try:
            with self.engine.begin() as conn:
                return self._ensure(conn)
        except sa.exc.DBAPIError:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(self.table.name, schema=self.table.schema):
                    raise
        with self.engine.begin() as conn:
            return self._ensure(conn)

    def insert_row(self, conn: Connection, values: dict[str, Any]) -> None:
        """Insert one row (``{column: value}``, timestamps as aware datetimes) on ``conn``, inside
        whatever transaction it has open: e.g. a log row written with another table's change."""
        conn.execute(sa.insert(self.sql_table).values(values))

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
        self,
        source: pd.DataFrame | Future[pd.DataFrame],
        mode: WriteMode,
        now: datetime,
        guard: Guard | None,
        before_commit: BeforeCommit | None,
    ) -> WriteSummary:
        """A keyed write of one frame on a fast path, under the table's lock
        (:meth:`_locked_transaction`). A ``Future`` source is waited for once the lock is held,
        the table ensured and (``replace``) its rows read."""
        staging = None if mode == "replace" else self.staging_table

        def work(conn: Connection, summary: WriteSummary) -> None:
            old = self._existing_locked(conn) if staging is None else None
            frame = source.result() if isinstance(source, Future) else source
            if isinstance(source, Future):
                frame = self._checked(frame, mode, now)
            if old is not None:
                self._replace(conn, frame, old, summary, guard)
            else:
                assert staging is not None
                self._load(conn, frame, staging)
                self._apply(conn, staging, mode, now, summary, guard, len(frame))

        return self._locked_transaction(staging, work, before_commit)

    def _locked_transaction(
        self,
        staging: sa.Table | None,
        work: Callable[[Connection, WriteSummary], None],
        before_commit: BeforeCommit | None,
    ) -> WriteSummary:
        """Run ``work`` under the table's lock, after the table is ensured and ``staging`` (if any)
        created afresh, then ``before_commit``, then commit; any failure rolls back.

        PostgreSQL and SQLite: one transaction, table creation and staging table included, so a
        crash leaves nothing behind. MySQL/MariaDB commit DDL on their own: the staging table is
        created before the transaction that loads and applies it, and dropped after it, the
        session's lock held throughout.
        """
        summary = WriteSummary()
        transactional_ddl = self.dialect_name not in _MYSQL
        with self._locked() as conn:
            try:
                if self.dialect_name == "postgresql":
                    self._raise_memory(conn)
                summary.created_table = self._ensure(conn)
                if staging is not None:
                    staging.drop(conn, checkfirst=True)  # what a crashed run left
                    self._create(conn, staging)
                work(conn, summary)
                if staging is not None and transactional_ddl:
                    staging.drop(conn)
                if before_commit is not None:
                    before_commit(conn, summary)
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
        self,
        fill: Callable[[sa.Table], int],
        mode: WriteMode,
        now: datetime,
        guard: Guard | None,
        before_commit: BeforeCommit | None,
    ) -> WriteSummary:
        """A write through ``insert_rows`` (which commits as it goes) into the staging table (``fill``
        loads it and returns the row count), then one transaction on the target. No portable
        lock: one writer per table at a time."""
        summary = WriteSummary(created_table=self.ensure_table())
        staging = self.staging_table
        with self.engine.begin() as conn:
            staging.drop(conn, checkfirst=True)  # what a crashed run left
            self._create(conn, staging)
        try:
            incoming = fill(staging)
            with self.engine.begin() as conn:
                self._apply(conn, staging, mode, now, summary, guard, incoming)
                if before_commit is not None:
                    before_commit(conn, summary)
        finally:
            self._drop(staging)
        return summary

    def _check_unique_keys(self, frame: pd.DataFrame) -> None:
        keys = frame[self._key]
        if keys.is_unique:
            return
        repeated = keys[keys.duplicated()]
        if len(repeated):
            raise self._repeated_keys_error(repeated.tolist(), f"{len(repeated)} value(s)")

    def _repeated_keys_error(self, repeated: list[Any], how_many: str) -> ValueError:
        examples = ", ".join(str(v) for v in sorted(set(repeated))[:5])
        return ValueError(
            f"Key column {self._key!r} repeats {how_many} in the data for table "
            f"{self.table} (e.g. {examples}); each key must appear once."
        )

    def _load_new_postgres(
        self, conn: Connection, fill: Callable[[Callable[[pd.DataFrame], object]], int]
    ) -> int:
        """A streamed write into a PostgreSQL table this very transaction created: no other session
        can see it, and every mode comes down to inserting every row, so the chunks are COPYed
        straight into it, indexes dropped, then built once (:meth:`_reload_postgres`). A key that
        two chunks repeat fails the key's build: reported by value. Returns the row count."""
        rows = 0

        def load() -> str:
            nonlocal rows
            rows = fill(lambda chunk: self._load(conn, chunk, self.sql_table))
            return f"{rows} rows"

        try:
            self._reload_postgres(conn, load)
        except sa.exc.IntegrityError as exc:
            detail = getattr(getattr(exc.orig, "diag", None), "message_detail", None) or ""
            repeated = re.findall(r"=\((.*)\) is duplicated", detail)
            if not self.spec.key or not repeated:
                raise
            raise self._repeated_keys_error(repeated, "value(s) across chunks") from exc
        return rows

    def _load_staging(self, conn: Connection, chunk: pd.DataFrame, staging: sa.Table) -> None:
        """Load one streamed chunk into the (keyed) staging table under a savepoint, so that a key
        an earlier chunk already sent is reported by value (the chunk itself was checked)."""
        if not self.spec.key:
            self._load(conn, chunk, staging)
            return
        try:
            with conn.begin_nested():
                self._load(conn, chunk, staging)
        except Exception as exc:
            if not isinstance(exc, (sa.exc.IntegrityError, conn.dialect.loaded_dbapi.IntegrityError)):
                raise
            column = staging.c[self._key]
            keys = chunk[self._key].tolist()
            repeated: list[Any] = []
            for start in range(0, len(keys), 500):
                query = sa.select(column).where(column.in_(keys[start : start + 500])).limit(5)
                repeated += conn.execute(query).scalars().all()
                if len(repeated) >= 5:
                    break
            if not repeated:
                raise
            raise self._repeated_keys_error(repeated, "value(s) across chunks") from exc

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

    def _define(self, name: TableName, indexes: bool, temporary: bool = False) -> sa.Table:
        """``spec`` as a Table named ``name`` in the writer's MetaData; the key is the primary key.

        ``temporary``: a temporary table (no schema), on PostgreSQL dropped at the latest on commit.
        """
        key = self.spec.key
        options: dict[str, Any] = (
            {"prefixes": ["TEMPORARY"], "postgresql_on_commit": "DROP"} if temporary else {}
        )
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
            schema=None if temporary else name.schema,
            # Any text a source sends, whatever the database's default (often latin1 or utf8mb3).
            mysql_charset="utf8mb4",
            **options,
        )
        if indexes:
            types = {c.name: c.type for c in self.spec.columns}
            for column in self.spec.indexes:
                # Bytewise on PostgreSQL (see TableSpec): equality lookups, a faster build.
                ops = {column: "text_pattern_ops"} if types[column] in TEXT_TYPES else {}
                sa.Index(f"{name.name[:40]}_{column}_idx", table.c[column], postgresql_ops=ops)
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
        """PostgreSQL ``COPY`` on the driver connection under ``conn``, so it joins its transaction.

        A thread encodes the next chunk while the database takes the current one: Arrow and numpy
        release the GIL, and the driver waits for the socket without holding it.
        """
        quote = conn.dialect.identifier_preparer
        columns = ", ".join(quote.quote(n) for n in self.spec.names)
        binary = self._takes_binary(conn, table)
        options = "FORMAT binary" if binary else "FORMAT csv"
        sql = f"COPY {quote.format_table(table)} ({columns}) FROM STDIN WITH ({options})"
        head, tail = (BINARY_SIGNATURE, BINARY_TRAILER) if binary else (b"", b"")
        encode = copy_binary if binary else copy_csv
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute("SET LOCAL TIME ZONE 'UTC'")  # the CSV's timestamps carry no offset
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="smspartner-copy") as encoder:
                if hasattr(cursor, "copy"):  # psycopg 3: one COPY
                    with cursor.copy(sql) as copy:
                        copy.write(head)
                        for data in self._encoded(frame, encode, encoder):
                            copy.write(data)
                        copy.write(tail)
                else:  # psycopg2: a COPY per chunk
                    for data in self._encoded(frame, encode, encoder):
                        cursor.copy_expert(sql, io.BytesIO(head + data + tail))
        finally:
            cursor.close()

    def _takes_binary(self, conn: Connection, table: sa.Table) -> bool:
        """Whether ``table``'s columns have exactly the types binary COPY encodes (the writer's own
        tables do; a table created by hand with other types gets CSV, which PostgreSQL casts)."""
        rows = conn.execute(
            sa.text(
                "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                "WHERE attrelid = CAST(:name AS regclass) AND attnum > 0 AND NOT attisdropped"
            ),
            {"name": self._quoted(conn, table)},
        ).all()
        found = {str(name).lower(): kind for name, kind in rows}
        return all(found.get(c.name.lower()) in BINARY_PG_TYPES[c.type] for c in self.spec.columns)

    def _encoded(
        self,
        frame: pd.DataFrame,
        encode: Callable[[pd.DataFrame, TableSpec], bytes],
        encoder: ThreadPoolExecutor,
    ) -> Iterator[bytes]:
        """The frame's chunks encoded for COPY, each on ``encoder`` while the previous one is sent."""
        pending: Future[bytes] | None = None
        for chunk in self._chunks(frame):
            future = encoder.submit(encode, chunk, self.spec)
            if pending is not None:
                yield pending.result()
            pending = future
        if pending is not None:
            yield pending.result()

    def _insert_rows(self, frame: pd.DataFrame, table: sa.Table) -> int:
        """Generic path: ``hook.insert_rows`` into ``table`` (it commits every chunk: staging only).
        Returns the number of rows."""
        if frame.empty:
            return 0
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
        return len(frame)

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
            convert = _PYTHON_TYPES.get(column.type)
            if column.type == "timestamp":
                columns.append(timestamp_values(series, engine_dialect))
            elif convert is not None:
                columns.append([None if pd.isna(v) else convert(v) for v in series.astype(object)])
            else:
                columns.append([None if _missing(v) else str(v) for v in series])
        return columns

    # ------------------------------------------------------------------ apply
    def _existing_locked(self, conn: Connection) -> _Existing:
        """What ``replace`` compares, read after other writers of the table are locked out
        (PostgreSQL: ``SHARE ROW EXCLUSIVE``, which readers pass), so it holds until the commit."""
        if self.dialect_name == "postgresql":
            conn.exec_driver_sql(
                f"LOCK TABLE {self._quoted(conn, self.sql_table)} IN SHARE ROW EXCLUSIVE MODE"
            )
        return self._existing(conn)

    def _replace(
        self,
        conn: Connection,
        frame: pd.DataFrame,
        old: _Existing,
        summary: WriteSummary,
        guard: Guard | None,
    ) -> None:
        """Empty the target and load ``frame`` on ``conn``, inside its transaction.

        ``old`` holds the target's keys, their ``first_seen`` values and whether they are live,
        read in the same transaction (:meth:`_existing_locked`); the counts, the guard and the
        carried-over ``first_seen`` come from comparing them with ``frame``'s keys in memory.
        """
        key, first_seen = self._key, self.spec.first_seen
        new_keys = frame[key].to_numpy()
        position = pd.Index(old.keys).get_indexer(new_keys) if len(old.keys) else np.full(len(new_keys), -1)
        kept = position >= 0
        kept_count = int(kept.sum())
        summary.inserted = len(new_keys) - kept_count
        summary.removed = len(old.keys) - kept_count
        if guard is not None:
            live = int(old.live.sum())
            guard(RemovalCounts(live, live - int(old.live[position[kept]].sum()), len(new_keys)))
        if first_seen and old.first_seen is not None and kept_count:
            values = naive_utc(frame[first_seen]).copy()
            carried = old.first_seen[position[kept]]
            values[kept] = np.where(np.isnat(carried), values[kept], carried)
            frame = frame.assign(**{first_seen: pd.Series(values, index=frame.index).dt.tz_localize("UTC")})
        self._replace_with(conn, frame)

    def _replace_with(self, conn: Connection, rows: pd.DataFrame | sa.Table | Callable[[], str]) -> None:
        """Empty the target and fill it with ``rows`` (a frame, or a staging table's rows), on
        ``conn``: PostgreSQL's ``TRUNCATE`` and index rebuild where it can, else delete + insert."""
        if self.dialect_name == "postgresql" and self._can_rebuild(conn):
            self._reload_postgres(conn, rows)
        else:
            conn.execute(sa.delete(self.sql_table))
            self._fill(conn, rows)

    def _fill(self, conn: Connection, rows: pd.DataFrame | sa.Table | Callable[[], str]) -> str:
        """Insert ``rows`` (a frame, every row of a staging table, or what a loader loads) into the
        target; say how many."""
        if isinstance(rows, sa.Table):
            conn.execute(self._copy_rows(rows))
            return "the staged rows"
        if callable(rows):
            return rows()
        self._load(conn, rows, self.sql_table)
        return f"{len(rows)} rows"

    def _existing(self, conn: Connection) -> _Existing:
        """The target's keys, live flags (``soft_delete`` empty) and ``first_seen`` values (naive UTC
        ``datetime64[us]``), read on ``conn``. PostgreSQL with an integer key sends each column as
        one binary value (a million rows in 0.2 s, against 4 s row by row); elsewhere the DBAPI
        cursor reads the rows (SQLAlchemy's per-row result processing would triple the time)."""
        target, soft, first_seen = self.sql_table, self.spec.soft_delete, self.spec.first_seen
        if self.dialect_name == "postgresql" and self._key_type in ("bigint", "int"):
            return self._existing_postgres(conn)
        live = sa.case((target.c[soft].is_(None), 1), else_=0) if soft else sa.literal(1)
        columns = [target.c[self._key], live]
        if first_seen:
            columns.append(target.c[first_seen])
        cursor = conn.connection.cursor()
        try:
            cursor.execute(str(sa.select(*columns).compile(conn, compile_kwargs={"literal_binds": True})))
            rows = cursor.fetchall()
        finally:
            cursor.close()
        keys = np.asarray([row[0] for row in rows])
        flags = np.asarray([bool(row[1]) for row in rows], dtype=bool)
        stamps = None
        if first_seen:
            # SQLite: ISO text ending in Z; MySQL: naive UTC datetimes; PostgreSQL: aware ones.
            stamps = naive_utc(pd.Series([row[2] for row in rows], dtype=object))
        return _Existing(keys, flags, stamps)

    def _existing_postgres(self, conn: Connection) -> _Existing:
        """:meth:`_existing` as ``bytea`` aggregates of one scan (so in the same row order):
        big-endian keys and ``first_seen`` in PostgreSQL's binary form; live flags, a byte a row,
        only when some rows are soft-deleted (``replace`` leaves none)."""
        quote = conn.dialect.identifier_preparer
        key, soft, first_seen = (
            quote.quote(n) if n else None for n in (self._key, self.spec.soft_delete, self.spec.first_seen)
        )
        table = self._quoted(conn, self.sql_table)
        aggregates = [f"string_agg(int8send(CAST({key} AS bigint)), ''::bytea)"]
        if first_seen:
            # A missing first_seen becomes PostgreSQL's smallest timestamp (-infinity): NaT below.
            seen = f"COALESCE(timestamptz_send({first_seen}), decode('8000000000000000', 'hex'))"
            aggregates.append(f"string_agg({seen}, ''::bytea)")
        aggregates.append(f"count(*) FILTER (WHERE {soft} IS NOT NULL)" if soft else "0")
        row = conn.exec_driver_sql(f"SELECT {', '.join(aggregates)} FROM {table}").one()
        keys = np.frombuffer(row[0] or b"", dtype=">i8").astype(np.int64)
        flags = np.ones(len(keys), dtype=bool)
        if row[-1]:
            flag = f"CASE WHEN {soft} IS NULL THEN decode('01', 'hex') ELSE decode('00', 'hex') END"
            live = conn.exec_driver_sql(f"SELECT string_agg({flag}, ''::bytea ORDER BY {key}) FROM {table}")
            order = np.argsort(keys, kind="stable")
            flags[order] = np.frombuffer(live.scalar_one(), dtype=np.uint8).astype(bool)
        stamps = None
        if first_seen:
            raw = np.frombuffer(row[1] or b"", dtype=">i8").astype(np.int64)
            unknown = (raw == np.iinfo(np.int64).min) | (raw == np.iinfo(np.int64).max)  # +-infinity
            stamps = np.where(unknown, np.iinfo(np.int64).min, raw + PG_EPOCH_MICROS).view("datetime64[us]")
        return _Existing(keys, flags, stamps)

    def _can_rebuild(self, conn: Connection) -> bool:
        """Whether the PostgreSQL target can be truncated and its indexes rebuilt: a plain table
        (a partitioned one keeps its indexes on the partitions), that no foreign key references
        (TRUNCATE refuses those), owned by the writer's role (only an owner drops and builds
        indexes) which may TRUNCATE it. Otherwise ``replace`` deletes and loads, indexes in place."""
        kind, owner, may_truncate, referenced = conn.execute(
            sa.text(
                "SELECT relkind, pg_has_role(relowner, 'USAGE'), has_table_privilege(oid, 'TRUNCATE'), "
                "EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f' AND confrelid = c.oid) "
                "FROM pg_class c WHERE oid = :oid"
            ),
            {"oid": self._oid(conn)},
        ).one()
        reason = (
            "not a plain table"
            if kind != "r"
            else "referenced by a foreign key"
            if referenced
            else "owned by another role"
            if not owner
            else "not to be truncated by this role"
            if not may_truncate
            else None
        )
        if reason:
            log.info("%s is %s: replaced with DELETE + COPY, indexes in place", self.table, reason)
        return reason is None

    def _reload_postgres(self, conn: Connection, rows: pd.DataFrame | sa.Table | Callable[[], str]) -> None:
        """PostgreSQL's fastest way to the same end state, in the write's transaction: ``TRUNCATE``
        (same table: views, grants, triggers, comments stay), drop the indexes, ``COPY`` (or ``INSERT ...
        SELECT`` from a staging table) into the bare table, then rebuild each index and key from its own definition (``pg_get_indexdef``,
        ``pg_get_constraintdef``), replica identity and clustering included. WAL-logged as any write.
        Building an index once over sorted input costs a fraction of maintaining it row by row."""
        target = self._quoted(conn, self.sql_table)
        quote = conn.dialect.identifier_preparer
        indexes = conn.execute(
            sa.text(
                "SELECT CAST(CAST(i.indexrelid AS regclass) AS text), pg_get_indexdef(i.indexrelid), "
                "c.conname, pg_get_constraintdef(c.oid), i.indisreplident, i.indisclustered "
                "FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid "
                "AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x') "
                "WHERE i.indrelid = :oid ORDER BY c.contype = 'p' DESC, i.indexrelid"
            ),
            {"oid": self._oid(conn)},
        ).all()
        conn.exec_driver_sql(f"TRUNCATE TABLE {target}")
        truncated = time.monotonic()
        for name, _, constraint, _, _, _ in indexes:
            if constraint:
                conn.exec_driver_sql(f"ALTER TABLE {target} DROP CONSTRAINT {quote.quote(constraint)}")
            else:
                conn.exec_driver_sql(f"DROP INDEX {name}")
        loaded = self._fill(conn, rows)
        for name, definition, constraint, constraint_definition, replica, clustered in indexes:
            if constraint:
                conn.exec_driver_sql(
                    f"ALTER TABLE {target} ADD CONSTRAINT {quote.quote(constraint)} {constraint_definition}"
                )
            else:
                conn.exec_driver_sql(definition)
            index = quote.quote(constraint) if constraint else name
            if replica:
                conn.exec_driver_sql(f"ALTER TABLE {target} REPLICA IDENTITY USING INDEX {index}")
            if clustered:
                conn.exec_driver_sql(f"ALTER TABLE {target} CLUSTER ON {index}")
        log.info(
            "Reloaded %s (%s, %d indexes rebuilt) in %.1f s under its ACCESS EXCLUSIVE lock, "
            "held until the commit",
            self.table,
            loaded,
            len(indexes),
            time.monotonic() - truncated,
        )

    @staticmethod
    def _raise_memory(conn: Connection) -> None:
        """For this transaction only, never lowered: hash joins of a million keys and index builds
        in memory rather than in temporary files (PostgreSQL's defaults are 4 MB and 64 MB)."""
        for setting, size in _POSTGRES_MEMORY.items():
            conn.execute(
                sa.text(
                    "SELECT set_config(:setting, :size, true) "
                    "WHERE pg_size_bytes(current_setting(:setting)) < pg_size_bytes(:size)"
                ),
                {"setting": setting, "size": size},
            )

    def _oid(self, conn: Connection) -> int:
        return int(
            conn.execute(
                sa.text("SELECT CAST(CAST(:name AS regclass) AS oid)"),
                {"name": self._quoted(conn, self.sql_table)},
            ).scalar_one()
        )

    @staticmethod
    def _quoted(conn: Connection, table: sa.Table) -> str:
        return str(conn.dialect.identifier_preparer.format_table(table))

    @property
    def _key_type(self) -> ColumnType:
        return next(c.type for c in self.spec.columns if c.name == self._key)

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
        no commit). Without a key (streamed writes only): ``replace`` empties the target and
        inserts every staged row, ``append`` inserts them."""
        target, soft, first_seen = self.sql_table, self.spec.soft_delete, self.spec.first_seen
        key = self._key
        if not key:
            summary.inserted = incoming
            if mode == "replace":
                summary.removed = self._count(conn, target)
                if guard is not None:
                    guard(RemovalCounts(summary.removed, summary.removed, incoming))
                self._replace_with(conn, staging)
            else:
                conn.execute(self._copy_rows(staging))
            return
        is_new, changed, gone = self._conditions(staging, mode)
        if self.dialect_name == "postgresql":
            self._count_postgres(conn, staging, mode, summary, guard, incoming)
        else:
            summary.inserted = self._count(conn, staging, is_new)
            if mode != "append":
                summary.updated = self._count(conn, target, changed)
                summary.removed = self._count(conn, target, gone)
                if guard is not None:
                    live = target.c[soft].is_(None) if soft else sa.true()
                    # upsert's ``gone`` already counts live rows only.
                    removed = (
                        summary.removed
                        if mode == "upsert" and soft
                        else self._count(conn, target, gone & live)
                    )
                    guard(RemovalCounts(self._count(conn, target, live), removed, incoming))
        if mode == "upsert" and not soft:
            summary.removed = 0  # keys absent from the data stay as they are: nothing to stamp
        if mode == "append":
            if summary.inserted:
                conn.execute(self._copy_rows(staging, is_new))
            return
        same_key = staging.c[key] == target.c[key]
        if mode == "replace":  # the generic path and streamed writes (write() replaces in _replace)
            if first_seen:  # carried over for keys still present
                stored = sa.select(target.c[first_seen]).where(same_key).scalar_subquery()
                carry = sa.exists().where(same_key, target.c[first_seen].is_not(None))
                conn.execute(sa.update(staging).where(carry).values({first_seen: stored}))
            self._replace_with(conn, staging)
            return
        # upsert: update changed rows (clearing the soft delete), add new ones, then stamp the gone.
        kept_as_is = (key, soft, first_seen)
        names = [n for n in self.spec.names if n not in kept_as_is]
        updates: dict[str, Any]
        if self.dialect_name == "postgresql" or self.dialect_name in _MYSQL:
            # UPDATE ... FROM staging (MySQL: a multiple-table UPDATE): one join.
            updates = {n: staging.c[n] for n in names}
            where = sa.and_(same_key, self._differs(staging)) if summary.updated else sa.false()
        else:
            updates = {n: sa.select(staging.c[n]).where(same_key).scalar_subquery() for n in names}
            where = changed
        if soft:
            updates[soft] = sa.null()
        if summary.updated:
            conn.execute(sa.update(target).where(where).values(updates))
        if summary.inserted:
            conn.execute(self._copy_rows(staging, is_new))
        if soft and summary.removed:
            conn.execute(sa.update(target).where(gone).values({soft: now}))

    def _count_postgres(
        self,
        conn: Connection,
        staging: sa.Table,
        mode: WriteMode,
        summary: WriteSummary,
        guard: Guard | None,
        incoming: int,
    ) -> None:
        """``upsert``/``append``/``replace`` counts on PostgreSQL in one pass: a full join of staging
        and target counted with ``FILTER`` (instead of a join per count), then the guard.
        ``replace`` removes every row whose key is not staged, soft-deleted or not; the guard
        counts the live ones."""
        target, soft, key = self.sql_table, self.spec.soft_delete, self._key
        if mode == "append":  # new keys only: an anti-join
            summary.inserted = self._count(conn, staging, ~sa.exists().where(staging.c[key] == target.c[key]))
            return
        if not conn.execute(sa.select(sa.exists().select_from(target))).scalar_one():
            summary.inserted = incoming  # an empty target (a first load): nothing to join
            return
        present, listed = target.c[key].is_not(None), staging.c[key].is_not(None)
        live = present & target.c[soft].is_(None) if soft else present
        differs = self._differs(staging)
        counts = [
            sa.func.count().filter(~present),
            sa.func.count().filter(present & listed & differs) if differs is not None else sa.literal(0),
            sa.func.count().filter((present if mode == "replace" else live) & ~listed),
            sa.func.count().filter(live),
            sa.func.count().filter(live & ~listed),
        ]
        joined = staging.join(target, staging.c[key] == target.c[key], full=True)
        row = conn.execute(sa.select(*counts).select_from(joined)).one()
        summary.inserted, summary.updated, summary.removed, live_rows, live_removed = (int(v) for v in row)
        if guard is not None:
            guard(RemovalCounts(live_rows, live_removed, incoming))

    def _conditions(self, staging: sa.Table, mode: WriteMode) -> tuple[Any, Any, Any]:
        """``(is_new, changed, gone)``: staging rows whose key the target lacks; target rows whose
        compared columns differ from staging (NULL-safe) or that come back from a soft delete;
        target rows whose key staging lacks (and, in ``upsert``, not soft-deleted yet)."""
        target, key, soft = self.sql_table, self._key, self.spec.soft_delete
        same_key = staging.c[key] == target.c[key]
        is_new = ~sa.exists().where(same_key)
        differs = self._differs(staging)
        changed = sa.exists().where(same_key, differs) if differs is not None else sa.false()
        gone = ~sa.exists().where(same_key)
        if soft and mode == "upsert":
            gone = sa.and_(gone, target.c[soft].is_(None))
        return is_new, changed, gone

    def _differs(self, staging: sa.Table) -> Any:
        """A target row differs from its staging row: a compared column (NULL-safe), or it comes
        back from a soft delete. None when nothing can differ."""
        target, soft = self.sql_table, self.spec.soft_delete
        differs = [staging.c[c].is_distinct_from(target.c[c]) for c in self.spec.compared]
        if soft:
            differs.append(target.c[soft].is_not(None))
        return sa.or_(*differs) if differs else None

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


#: How the driver paths bind the non-text, non-timestamp types.
_PYTHON_TYPES: dict[str, Callable[[Any], Any]] = {"bigint": int, "int": int, "double": float, "bool": bool}


@dataclass(frozen=True)
class _Existing:
    """A target's rows as ``replace`` compares them: keys, live flags, ``first_seen`` (naive UTC)."""

    keys: np.ndarray
    live: np.ndarray
    first_seen: np.ndarray | None


def timestamp_values(series: pd.Series, engine_dialect: str, sqlite_format: str = ISO_FORMAT) -> list[Any]:
    """UTC instants as a timestamp column of ``engine_dialect`` binds them, None for missing.

    :param sqlite_format: The text SQLite stores (it has no timestamp type); the default is the
        writer's own (:class:`_IsoUtcText`), whole seconds.
    """
    if engine_dialect == "sqlite":
        stamps = pd.to_datetime(series, utc=True)
        text = stamps.dt.strftime(sqlite_format)
        return [None if missing else v for v, missing in zip(text.tolist(), stamps.isna(), strict=True)]
    # numpy turns datetime64[us] into datetime objects and NaT into None.
    naive = naive_utc(series).astype(object).tolist()
    if engine_dialect in _MYSQL:
        return naive  # as _NaiveUtcDatetime
    return [None if v is None else v.replace(tzinfo=timezone.utc) for v in naive]


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)
