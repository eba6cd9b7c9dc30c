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
"""

from __future__ import annotations

import io
import logging
import re
import uuid
from collections.abc import Iterator
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

ColumnType = Literal["bigint", "int", "short_text", "text", "timestamp"]
WriteMode = Literal["replace", "upsert", "append", "insert"]
LoadPath = Literal["copy", "executemany", "insert_rows"]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
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

    Attributes: ``table`` (the validated :class:`TableName`), ``dialect_name`` (the hook's),
    ``sql_table`` (the target as a ``sqlalchemy.Table`` in the writer's own ``MetaData``).
    """

    def __init__(self, hook: Any, table: str, spec: TableSpec, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.hook = hook
        self.table = TableName.parse(table)
        self.spec = spec
        self.chunk_size = chunk_size
        self.dialect_name: str = hook.dialect_name
        self.load_path: LoadPath = _LOAD_PATHS.get(self.dialect_name, "insert_rows")
        self.metadata = sa.MetaData()
        self.sql_table = self._define(self.table, indexes=True)

    @cached_property
    def engine(self) -> Engine:
        """The hook's engine. No pool: a write is a few transactions, and each connection closes after."""
        return self.hook.get_sqlalchemy_engine(engine_kwargs={"poolclass": NullPool})

    # ------------------------------------------------------------------ public
    def write(self, frame: pd.DataFrame, mode: WriteMode, now: datetime | None = None) -> WriteSummary:
        """Write ``frame`` in ``mode`` and return what changed.

        ``replace``: the table ends up holding exactly ``frame``; ``upsert``: new keys inserted,
        changed rows updated, keys absent from ``frame`` soft-deleted (``now``, default the current
        time, in the spec's ``soft_delete`` column); ``append``: only keys not yet in the table;
        ``insert``: every row, no key check (results tables).
        """
        missing = [c for c in self.spec.names if c not in frame.columns]
        if missing:
            raise ValueError(f"DataFrame lacks column(s) {missing} needed by table {self.table}.")
        if mode != "insert" and not self.spec.key:
            raise ValueError(f"Mode {mode!r} needs a key column in the table spec.")
        summary = WriteSummary(created_table=self.ensure_table())
        if mode == "insert" and frame.empty:
            return summary
        if mode in ("replace", "insert") and self.load_path != "insert_rows":
            # Straight into the target: the data is written once.
            with self.engine.begin() as conn:
                if mode == "replace":
                    self._replace(conn, frame, summary)
                else:
                    self._load(conn, frame, self.sql_table)
                    summary.inserted = len(frame)
            return summary
        self._write_through_staging(frame, mode, now or datetime.now(timezone.utc), summary)
        return summary

    def ensure_table(self) -> bool:
        """Create the table (with its key and indexes) unless it exists; check its columns. True if created.

        An existence check that fails (no privilege, lost connection) raises its own error: it is
        never taken for a missing table.
        """
        with self.engine.begin() as conn:
            inspector = sa.inspect(conn)
            if not inspector.has_table(self.table.name, schema=self.table.schema):
                self._create(conn, self.sql_table)
                log.info("Created table %s", self.table)
                return True
            existing = {
                str(c["name"]).lower()
                for c in inspector.get_columns(self.table.name, schema=self.table.schema)
            }
        missing = [c for c in self.spec.names if c.lower() not in existing]
        if missing:
            raise ValueError(
                f"Table {self.table} exists but lacks column(s) {missing}; drop it or choose another table."
            )
        return False

    def read_frame(self) -> pd.DataFrame:
        """Read the spec's columns of the whole table back, timestamps as UTC (for tests and small tables)."""
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(self.sql_table), conn)

    # ------------------------------------------------------------------ DDL
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
        )
        if indexes:
            for column in self.spec.indexes:
                sa.Index(f"{name.name[:40]}_{column}_idx", table.c[column])
        return table

    def _create(self, conn: Connection, table: sa.Table) -> None:
        table.create(conn)

    def _drop(self, table: sa.Table) -> None:
        try:
            with self.engine.begin() as conn:
                table.drop(conn)
        except Exception:  # the original error matters more than a leftover staging table
            log.warning("Could not drop staging table %s", table.fullname, exc_info=True)
        finally:
            self.metadata.remove(table)

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
    def _write_through_staging(
        self, frame: pd.DataFrame, mode: WriteMode, now: datetime, summary: WriteSummary
    ) -> None:
        """Load a staging table, then change the target in one transaction; always drop the staging table."""
        name = self.table.with_name(f"{self.table.name[:40]}__stg_{uuid.uuid4().hex[:8]}")
        staging = self._define(name, indexes=False)
        with self.engine.begin() as conn:
            self._create(conn, staging)
        try:
            if self.load_path == "insert_rows":
                self._insert_rows(frame, staging)
            with self.engine.begin() as conn:
                if self.load_path != "insert_rows":
                    self._load(conn, frame, staging)
                self._apply(conn, staging, mode, now, summary)
        finally:
            self._drop(staging)

    def _replace(self, conn: Connection, frame: pd.DataFrame, summary: WriteSummary) -> None:
        """Empty the target and load ``frame`` on ``conn``: readers see the old rows until commit.

        The counts come from comparing key sets, the old ones read in the same transaction.
        """
        key = self._key
        old_keys = _fetch_column(conn, sa.select(self.sql_table.c[key]))
        new_keys = frame[key].to_numpy()
        kept = len(np.intersect1d(old_keys, new_keys, assume_unique=True))  # keys are unique
        summary.inserted = len(new_keys) - kept
        summary.removed = len(old_keys) - kept
        conn.execute(sa.delete(self.sql_table))
        self._load(conn, frame, self.sql_table)

    def _apply(
        self, conn: Connection, staging: sa.Table, mode: WriteMode, now: datetime, summary: WriteSummary
    ) -> None:
        """Set-based statements from ``staging`` to the target, counts first (on ``conn``, no commit)."""
        target = self.sql_table
        if mode == "insert":
            conn.execute(self._copy_rows(staging))
            summary.inserted = self._count(conn, staging)
            return
        is_new, changed, gone = self._conditions(staging, mode)
        summary.inserted = self._count(conn, staging, is_new)
        if mode == "append":
            conn.execute(self._copy_rows(staging, is_new))
            return
        summary.updated = self._count(conn, target, changed)
        summary.removed = self._count(conn, target, gone)
        if mode == "replace":
            conn.execute(sa.delete(target))
            conn.execute(self._copy_rows(staging))
            return
        # upsert: update changed rows (clearing the soft delete), add new ones, then stamp the gone.
        key, soft = self._key, self.spec.soft_delete
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
        elif column.type in ("short_text", "text"):
            # Text columns may hold mixed Python types (raw inputs): send their text, as the
            # executemany path does.
            arrays[column.name] = pa.array(values.astype("str"), from_pandas=True)
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
