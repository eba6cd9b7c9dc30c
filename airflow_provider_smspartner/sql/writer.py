"""Writes DataFrames, or rows, into a table of any DbApiHook database: the provider's one writer.

Every provider-owned table goes through it (the stop list and its run log, the bulk results,
the suppression output and audit), and so do the tables made from a user's data. Statements are
SQLAlchemy Core on the hook's engine. The load path follows ``hook.dialect_name``: ``COPY`` on
PostgreSQL (:mod:`.postgres`), a chunked ``executemany`` of a Core ``INSERT`` on MySQL/MariaDB
and SQLite, ``DbApiHook.insert_rows(..., executemany=True)`` into a staging table elsewhere.

``replace`` and ``insert`` load straight into the target inside one transaction; ``upsert`` and
``append`` (and every mode on the generic path) load a staging table (temporary on PostgreSQL and
SQLite) and apply set-based statements to the target (:mod:`.apply`) in one transaction. Either
way a failure leaves the target as it was. ``replace`` compares the target's keys in its
transaction, then empties and reloads it (PostgreSQL: :func:`.postgres.reload`, readers wait
until the commit; elsewhere ``DELETE`` + insert, readers keep the old rows until the commit).
The keyed modes hold a per-table lock for the whole write (:mod:`.locks`); their staging table has
one fixed name per target (:func:`~.ddl.staging_name`), dropped first by every run. Databases
without a fast path get no lock.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_provider_smspartner.sql import ddl, postgres
from airflow_provider_smspartner.sql.apply import (
    BeforeCommit,
    Guard,
    Staged,
    WriteMode,
    WriteSummary,
    compare_in_memory,
    read_existing,
)
from airflow_provider_smspartner.sql.dbapi import unpooled_engine
from airflow_provider_smspartner.sql.ddl import define_table, drop_quietly, staging_name
from airflow_provider_smspartner.sql.locks import table_lock
from airflow_provider_smspartner.sql.names import TableName, check_column_names
from airflow_provider_smspartner.sql.tables import TableSpec
from airflow_provider_smspartner.sql.types import MYSQL, driver_columns, utc
from airflow_provider_smspartner.utils.arguments import DEFAULT_CHUNK_SIZE

log = logging.getLogger(__name__)

LoadPath = Literal["copy", "executemany", "insert_rows"]
#: Seconds a keyed write waits for another writer of the same table before it gives up.
DEFAULT_LOCK_TIMEOUT = 600.0
#: ``hook.dialect_name`` -> load path; any other database takes ``insert_rows``.
_LOAD_PATHS: dict[str, LoadPath] = {
    "postgresql": "copy",
    **dict.fromkeys(MYSQL, "executemany"),
    "sqlite": "executemany",
}


class SqlTableWriter:
    """Writes DataFrames shaped like ``spec`` into ``table`` through ``hook``.

    :param hook: Any ``DbApiHook`` (common-sql >= 1.22, for ``dialect_name``).
    :param table: Target table, ``name`` or ``schema.name`` (validated before any SQL), or a
        :class:`~.names.TableName`.
    :param spec: The table's columns, key and upsert rules; column names the database cannot
        store as given are refused on construction (:func:`~.names.check_column_names`).
    :param chunk_size: Rows per load chunk; bounds memory to one chunk besides the frame.
    :param lock_timeout: Seconds a keyed write waits for another writer of the table to finish.
    :param prepare_chunk: Turns each chunk of the frames the writer is given into the rows it
        writes (keyed-hash mode: the numbers into their hashes), as the chunk is loaded: on
        PostgreSQL on the thread that encodes the ``COPY``, while the database takes the chunk
        before. The frames given must hold the key (and ``first_seen``, when given); each
        prepared chunk must hold every column of ``spec``, else the write fails and changes
        nothing. None (default): the frames are written as they are.
    :raises ValueError: an invalid table name, or a column name the database cannot store as
        given (naming the column, the database and the rule), before any SQL runs.

    Attributes: ``table`` (the validated :class:`~.names.TableName`), ``dialect_name`` (the
    hook's), ``sql_table`` (the target as a ``sqlalchemy.Table`` in the writer's own ``MetaData``).
    """

    def __init__(
        self,
        hook: Any,
        table: str | TableName,
        spec: TableSpec,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        prepare_chunk: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    ) -> None:
        self.hook = hook
        self.table = TableName.parse(table)
        self.spec = spec
        self.chunk_size = chunk_size
        self.lock_timeout = lock_timeout
        self.prepare_chunk = prepare_chunk
        self.dialect_name: str = hook.dialect_name
        # Before any SQL: a name the database would cut or reject must not create a table.
        check_column_names(spec.names, self.dialect_name, table=str(self.table))
        self.load_path: LoadPath = _LOAD_PATHS.get(self.dialect_name, "insert_rows")
        self.metadata = sa.MetaData()
        self.sql_table = define_table(self.metadata, self.table, spec, indexes=True)
        #: Compiled INSERT per table name: its text and the positional order of its parameters.
        self._inserts: dict[str, tuple[str, list[int] | None]] = {}

    @cached_property
    def engine(self) -> Engine:
        """The hook's engine. No pool: a write is a few transactions, and each connection closes after."""
        return unpooled_engine(self.hook)

    @cached_property
    def staging_table(self) -> sa.Table:
        """The keyed modes' staging table (:func:`staging_name`), shaped like the target, no index.

        On PostgreSQL and SQLite a temporary table, living in the write's session. PostgreSQL: its
        load writes no WAL. SQLite: it lives in the connection's own temporary database, so a
        large load never needs the main database's exclusive lock before the target changes
        (which a reader of that database, e.g. the source of a streamed write, would hold off).
        """
        temporary = self.dialect_name in ("postgresql", "sqlite")
        return define_table(
            self.metadata, staging_name(self.table), self.spec, indexes=False, temporary=temporary
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
        table if needed and reads what ``replace`` compares; the table changes only once the
        frame is there, and whatever the callable raises aborts the write, which changes nothing.

        ``replace``: the table ends up holding exactly ``frame``; ``upsert``: new keys inserted,
        changed rows updated, keys absent from ``frame`` soft-deleted (``now``, default the current
        time, in the spec's ``soft_delete`` column); ``append``: only keys not yet in the table;
        ``insert``: every row, no key check. The spec's ``first_seen`` column gets ``now`` on
        insert (unless ``frame`` holds it) and keeps its stored value otherwise.

        :param guard: ``replace``/``upsert`` only: called with the ``RemovalCounts`` inside the
            write's transaction, under the table's lock, before the target changes; whatever it
            raises aborts the write and leaves the table as it was.
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
        self,
        chunks: Iterable[pd.DataFrame],
        mode: WriteMode,
        *,
        now: datetime | None = None,
        before_commit: BeforeCommit | None = None,
    ) -> WriteSummary:
        """Stream ``chunks`` into the table in ``mode`` and return what changed.

        The chunks are taken one at a time (memory holds one) and loaded into the staging table,
        then set-based statements from staging apply the mode, in the one transaction that also
        holds the table's lock and creates the table when missing (PostgreSQL, SQLite;
        MySQL/MariaDB commit the DDL on their own). A failure, in a chunk's iterator too, leaves
        the table as it was. Modes as :meth:`write`; without a key, ``replace`` deletes every row
        and inserts the new ones, ``append`` inserts every row.

        :param before_commit: As :meth:`write`'s, in every mode.
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
                lambda table: fill(lambda chunk: self._insert_rows(chunk, table)),
                mode,
                now,
                None,
                before_commit,
            )

        def work(conn: Connection, summary: WriteSummary) -> None:
            if self.dialect_name == "postgresql" and summary.created_table and not self.spec.first_seen:
                summary.inserted = self._load_new_postgres(conn, fill)
                return
            incoming = fill(lambda chunk: self._load_staging(conn, chunk, staging))
            self._apply(conn, staging, mode, now, summary, None, incoming)

        return self._locked_transaction(staging, work, before_commit)

    def ensure_table(self) -> bool:
        """Create the table (with its key and indexes) unless it exists; check its columns. True if
        created. Writers creating it at once are fine (:func:`.ddl.ensure_with_retries`).

        :raises TableShapeError: the table exists without some of the spec's columns.
        """
        return ddl.ensure_with_retries(self.engine, self.table, self._ensure)

    def insert_row(self, conn: Connection, values: dict[str, Any]) -> None:
        """Insert one row (``{column: value}``, timestamps as aware datetimes) on ``conn``, inside
        whatever transaction it has open: e.g. a log row written with another table's change."""
        conn.execute(sa.insert(self.sql_table).values(values))

    def insert_driver_rows(
        self, conn: Connection, rows: Sequence[Sequence[Any]], table: sa.Table | None = None
    ) -> None:
        """Insert ``rows`` into the table (or ``table``, shaped like it) on ``conn``, inside whatever
        transaction it has open: one ``executemany`` per ``chunk_size`` rows of a Core ``INSERT``
        compiled once. Each row holds the spec's columns in order, each value already in the form
        the driver binds (:func:`~.types.driver_columns`, :func:`~.types.timestamp_param`):
        binding row by row through SQLAlchemy's parameter processing would cost twice the load."""
        sql, order = self._insert_statement(conn, self.sql_table if table is None else table)
        names = self.spec.names
        for start in range(0, len(rows), self.chunk_size):
            chunk = rows[start : start + self.chunk_size]
            params: list[Any]
            if order is None:  # named paramstyle
                params = [dict(zip(names, row, strict=True)) for row in chunk]
            elif order == list(range(len(names))):
                params = list(chunk)
            else:
                params = [tuple(row[i] for i in order) for row in chunk]
            conn.exec_driver_sql(sql, params)

    def read_frame(self) -> pd.DataFrame:
        """Read the spec's columns of the whole table back, timestamps as UTC (for tests and small tables)."""
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(self.sql_table), conn)

    # ------------------------------------------------------------------ modes
    def _checked(self, frame: pd.DataFrame, mode: WriteMode, now: datetime) -> pd.DataFrame:
        """``frame`` with the spec's ``first_seen`` column (``now`` when missing), checked: every
        column present, keys unique in the keyed modes."""
        first_seen = self.spec.first_seen
        if first_seen and first_seen not in frame.columns:
            frame = frame.assign(**{first_seen: pd.Series(utc(now), index=frame.index)})
        # With prepare_chunk, the other columns are made chunk by chunk (checked in _prepared).
        needed = self.spec.names if self.prepare_chunk is None else self.spec.key_columns
        self._check_columns(frame, needed, "DataFrame")
        if mode != "insert":
            self._check_unique_keys(frame)
        return frame

    def _insert(self, frame: pd.DataFrame) -> WriteSummary:
        """Every row of ``frame``, no key: straight into the target, or through a staging table of
        its own on the generic path (writers of one table run side by side: no lock)."""
        summary = WriteSummary(created_table=self.ensure_table())
        if frame.empty:
            return summary
        if self.load_path != "insert_rows":
            with self.engine.begin() as conn:
                self._load(conn, frame, self.sql_table)
            summary.inserted = len(frame)
            return summary
        name = self.table.with_name(f"{self.table.name[:40]}__stg_{uuid.uuid4().hex[:8]}")
        staging = define_table(self.metadata, name, self.spec, indexes=False)
        with self.engine.begin() as conn:
            self._create(conn, staging)
        try:
            self._insert_rows(frame, staging)
            with self.engine.begin() as conn:
                conn.execute(self._staged(staging).copy_rows())
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
            if staging is None and self.dialect_name == "postgresql":
                postgres.lock_for_replace(conn, self.sql_table)  # what is read holds until the commit
            old = (
                read_existing(conn, self.sql_table, self.spec, self.dialect_name) if staging is None else None
            )
            frame = source.result() if isinstance(source, Future) else source
            if isinstance(source, Future):
                frame = self._checked(frame, mode, now)
            if old is not None:
                self._replace_with(conn, compare_in_memory(frame, old, self.spec, summary, guard))
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
        transactional_ddl = self.dialect_name not in MYSQL
        with self._locked() as conn:
            try:
                if self.dialect_name == "postgresql":
                    postgres.raise_memory(conn)
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
        """Counts and guard, then set-based statements from ``staging`` to the target (on ``conn``,
        no commit). Without a key (streamed writes only): ``replace`` empties the target and
        inserts every staged row, ``append`` inserts them."""
        staged = self._staged(staging)
        staged.count(conn, mode, summary, guard, incoming)
        if mode == "replace":  # the generic path and streamed writes (write() compares in memory)
            staged.carry_first_seen(conn)
            self._replace_with(conn, staging)
        elif mode == "append":
            staged.insert_new(conn, summary)
        else:
            staged.upsert(conn, now, summary)

    def _staged(self, staging: sa.Table) -> Staged:
        return Staged(self.sql_table, staging, self.spec, self.dialect_name)

    def _check_columns(self, frame: pd.DataFrame, needed: Sequence[str], what: str) -> None:
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{what} lacks column(s) {missing} needed by table {self.table}.")

    def _check_unique_keys(self, frame: pd.DataFrame) -> None:
        keys = frame[self.spec.key or ""]
        if keys.is_unique:
            return
        repeated = keys[keys.duplicated()]
        if len(repeated):
            raise self._repeated_keys_error(repeated.tolist(), f"{len(repeated)} value(s)")

    def _repeated_keys_error(self, repeated: list[Any], how_many: str) -> ValueError:
        examples = ", ".join(str(v) for v in sorted(set(repeated))[:5])
        return ValueError(
            f"Key column {self.spec.key!r} repeats {how_many} in the data for table "
            f"{self.table} (e.g. {examples}); each key must appear once."
        )

    def _load_new_postgres(
        self, conn: Connection, fill: Callable[[Callable[[pd.DataFrame], object]], int]
    ) -> int:
        """A streamed write into a PostgreSQL table this very transaction created: no other session
        can see it, and every mode comes down to inserting every row, so the chunks are COPYed
        straight into it, indexes dropped, then built once (:func:`.postgres.reload`). A key that
        two chunks repeat fails the key's build: reported by value. Returns the row count."""
        rows = 0

        def load() -> str:
            nonlocal rows
            rows = fill(lambda chunk: self._load(conn, chunk, self.sql_table))
            return f"{rows} rows"

        try:
            postgres.reload(conn, self.sql_table, load)
        except sa.exc.IntegrityError as exc:
            repeated = postgres.duplicated_key_values(exc)
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
            repeated = self._staged(staging).staged_keys(conn, chunk[self.spec.key].tolist())
            if not repeated:
                raise
            raise self._repeated_keys_error(repeated, "value(s) across chunks") from exc

    def _locked(self) -> AbstractContextManager[Connection]:
        """A connection holding the table's write lock, with a transaction open under it
        (:func:`.locks.table_lock`)."""
        return table_lock(self.engine, self.dialect_name, self.table, self.lock_timeout)

    # ------------------------------------------------------------------ DDL
    def _ensure(self, conn: Connection) -> bool:
        """:meth:`ensure_table` on ``conn`` (inside its transaction where the database allows)."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(self.table.name, schema=self.table.schema):
            self._create(conn, self.sql_table)
            log.info("Created table %s", self.table)
            return True
        ddl.check_shape(inspector, self.table, self.spec)
        return False

    def _create(self, conn: Connection, table: sa.Table) -> None:
        table.create(conn)

    def _drop(self, table: sa.Table, conn: Connection | None = None) -> None:
        drop_quietly(table, self.engine if conn is None else conn)

    # ------------------------------------------------------------------ load
    def _load(self, conn: Connection, frame: pd.DataFrame, table: sa.Table) -> None:
        """Bulk-load ``frame`` into ``table`` on ``conn`` (inside its transaction, no commit)."""
        if frame.empty:
            return
        if self.load_path == "copy":
            postgres.copy_chunks(conn, table, self.spec, self._chunks(frame), prepare=self._prepared)
            return
        for chunk in self._chunks(frame):
            chunk = self._prepared(chunk)
            rows = list(zip(*driver_columns(chunk, self.spec, conn.dialect.name), strict=True))
            self.insert_driver_rows(conn, rows, table)

    def _insert_statement(self, conn: Connection, table: sa.Table) -> tuple[str, list[int] | None]:
        """``table``'s Core ``INSERT`` of the spec's columns compiled for ``conn``, and where each
        of its positional parameters comes from in a row (None: named parameters)."""
        if table.fullname not in self._inserts:
            insert = sa.insert(table).compile(dialect=conn.dialect, column_keys=self.spec.names)
            order = None
            if insert.positional:
                order = [self.spec.names.index(name) for name in insert.positiontup or ()]
            self._inserts[table.fullname] = (str(insert), order)
        return self._inserts[table.fullname]

    def _insert_rows(self, frame: pd.DataFrame, table: sa.Table) -> int:
        """Generic path: ``hook.insert_rows`` into ``table`` (it commits every chunk: staging only).
        Returns the number of rows."""
        if frame.empty:
            return 0
        quote = self.engine.dialect.identifier_preparer
        dialect_name = self.engine.dialect.name

        def rows() -> Iterator[tuple[Any, ...]]:
            for chunk in self._chunks(frame):
                yield from zip(*driver_columns(self._prepared(chunk), self.spec, dialect_name), strict=True)

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

    def _prepared(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """``chunk`` as written: through ``prepare_chunk`` when the writer has one, checked."""
        if self.prepare_chunk is None:
            return chunk
        prepared = self.prepare_chunk(chunk)
        self._check_columns(prepared, self.spec.names, "A prepared chunk")
        return prepared

    # ------------------------------------------------------------------ replace
    def _replace_with(self, conn: Connection, rows: pd.DataFrame | sa.Table | Callable[[], str]) -> None:
        """Empty the target and fill it with ``rows`` (a frame, or a staging table's rows), on
        ``conn``: PostgreSQL's ``TRUNCATE`` and index rebuild where it can, else delete + insert."""
        if self.dialect_name == "postgresql" and postgres.can_rebuild(conn, self.sql_table):
            postgres.reload(conn, self.sql_table, lambda: self._fill(conn, rows))
        else:
            conn.execute(sa.delete(self.sql_table))
            self._fill(conn, rows)

    def _fill(self, conn: Connection, rows: pd.DataFrame | sa.Table | Callable[[], str]) -> str:
        """Insert ``rows`` (a frame, every row of a staging table, or what a loader loads) into the
        target; say how many."""
        if isinstance(rows, sa.Table):
            conn.execute(self._staged(rows).copy_rows())
            return "the staged rows"
        if callable(rows):
            return rows()
        self._load(conn, rows, self.sql_table)
        return f"{len(rows)} rows"
