"""Writes DataFrames into a table of any DbApiHook database: the provider's one warehouse writer.

Used by the stop-list transfer (replace / upsert / append) and by the bulk operators' results
tables. Every mode first loads the rows into a staging table (PostgreSQL ``COPY``, chunked
``executemany`` on SQLite and MySQL/MariaDB, ``DbApiHook.insert_rows`` elsewhere), then applies
set-based statements to the target in one transaction, so a failure at any point leaves the
target as it was and readable.

SQL text is built with f-strings only from identifiers that ``TableName.parse`` validated and the
dialect quoted, and from the spec's own column names; values always travel as parameters or COPY data.
"""

from __future__ import annotations

import io
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from airflow_provider_smspartner.utils.arguments import DEFAULT_CHUNK_SIZE

log = logging.getLogger(__name__)

ColumnType = Literal["bigint", "int", "short_text", "text", "timestamp"]
WriteMode = Literal["replace", "upsert", "append", "insert"]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


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
class Dialect:
    """What differs between databases: quoting, types, null-safe comparison, bulk load path."""

    name: str
    quote_open: str
    quote_close: str
    types: dict[str, str]
    distinct_template: str  # null-safe "a differs from b"
    placeholder: str
    load: Literal["copy", "executemany", "insert_rows"]
    timestamps: Literal["aware", "naive_utc", "iso_text"]

    def quote(self, identifier: str) -> str:
        return f"{self.quote_open}{identifier}{self.quote_close}"

    def table(self, table: TableName) -> str:
        return ".".join(self.quote(p) for p in (table.schema, table.name) if p)

    def differs(self, left: str, right: str) -> str:
        return self.distinct_template.format(a=left, b=right)


_TYPES_ANSI = {"bigint": "BIGINT", "int": "INTEGER", "short_text": "VARCHAR(64)", "text": "VARCHAR(2000)"}
DIALECTS: dict[str, Dialect] = {
    "postgres": Dialect(
        "postgresql",
        '"',
        '"',
        {**_TYPES_ANSI, "text": "TEXT", "timestamp": "TIMESTAMP WITH TIME ZONE"},
        "{a} IS DISTINCT FROM {b}",
        "%s",
        "copy",
        "aware",
    ),
    "mysql": Dialect(
        "mysql",
        "`",
        "`",
        {**_TYPES_ANSI, "text": "TEXT", "timestamp": "DATETIME(6)"},
        "NOT ({a} <=> {b})",
        "%s",
        "executemany",
        "naive_utc",
    ),
    # SQLite has no timestamp type: UTC instants are stored as ISO-8601 text, which sorts correctly.
    "sqlite": Dialect(
        "sqlite",
        '"',
        '"',
        {"bigint": "INTEGER", "int": "INTEGER", "short_text": "TEXT", "text": "TEXT", "timestamp": "TEXT"},
        "{a} IS NOT {b}",
        "?",
        "executemany",
        "iso_text",
    ),
    "generic": Dialect(
        "generic",
        '"',
        '"',
        {**_TYPES_ANSI, "timestamp": "TIMESTAMP"},
        "{a} IS DISTINCT FROM {b}",
        "%s",
        "insert_rows",
        "naive_utc",
    ),
}
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


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


def dialect_for(hook: Any) -> Dialect:
    """Pick the dialect from the hook's connection type; unknown databases take the generic path."""
    conn_type = getattr(hook, "conn_type", None) or ""
    if conn_type in ("postgres", "postgresql"):
        return DIALECTS["postgres"]
    if conn_type in ("mysql", "mariadb"):
        return DIALECTS["mysql"]
    if conn_type == "sqlite":
        return DIALECTS["sqlite"]
    return DIALECTS["generic"]


@dataclass
class WriteSummary:
    """What a write did: rows ``inserted``, ``updated`` (changed or back on the list), ``removed``."""

    inserted: int = 0
    updated: int = 0
    removed: int = 0
    created_table: bool = False


class SqlTableWriter:
    """Writes DataFrames shaped like ``spec`` into ``table`` through ``hook``.

    :param hook: Any ``DbApiHook``.
    :param table: Target table, ``name`` or ``schema.name`` (validated).
    :param spec: The table's columns, key and upsert rules.
    :param chunk_size: Rows per load chunk; bounds memory to one chunk besides the frame.
    """

    def __init__(self, hook: Any, table: str, spec: TableSpec, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.hook = hook
        self.table = TableName.parse(table)
        self.spec = spec
        self.chunk_size = chunk_size
        self.dialect = dialect_for(hook)

    # ------------------------------------------------------------------ public
    def write(self, frame: pd.DataFrame, mode: WriteMode, now: datetime | None = None) -> WriteSummary:
        """Write ``frame`` in ``mode`` and return what changed.

        ``replace``: the table ends up holding exactly ``frame``; ``upsert``: new keys inserted,
        changed rows updated, keys absent from ``frame`` soft-deleted; ``append``: only keys not yet
        in the table; ``insert``: every row, no key check (results tables).
        """
        missing = [c for c in self.spec.names if c not in frame.columns]
        if missing:
            raise ValueError(f"DataFrame lacks column(s) {missing} needed by table {self.table}.")
        if mode != "insert" and not self.spec.key:
            raise ValueError(f"Mode {mode!r} needs a key column in the table spec.")
        summary = WriteSummary(created_table=self.ensure_table())
        if mode == "insert":
            self._load(frame, self.table)
            summary.inserted = len(frame)
            return summary
        if mode == "replace" and self.dialect.load != "insert_rows":
            self._replace_in_one_transaction(frame, summary)
            return summary
        staging = self.table.with_name(f"{self.table.name[:40]}__stg_{uuid.uuid4().hex[:8]}")
        self._create(staging, primary_key=True)
        try:
            self._load(frame, staging)
            self._apply(staging, mode, now or pd.Timestamp.now(tz="UTC").to_pydatetime(), summary)
        finally:
            self._drop(staging)
        return summary

    def ensure_table(self) -> bool:
        """Create the table (with its key and indexes) unless it exists; check its columns. True if created."""
        existing = self._existing_columns(self.table)
        if existing is None:
            self._create(self.table, primary_key=bool(self.spec.key), indexes=True)
            log.info("Created table %s", self.table)
            return True
        missing = [c for c in self.spec.names if c.lower() not in existing]
        if missing:
            raise ValueError(
                f"Table {self.table} exists but lacks column(s) {missing}; drop it or choose another table."
            )
        return False

    def read_frame(self) -> pd.DataFrame:
        """Read the whole table back (for tests and small tables)."""
        return self.hook.get_df(f"SELECT * FROM {self.dialect.table(self.table)}")

    # ------------------------------------------------------------------ DDL
    def _existing_columns(self, table: TableName) -> set[str] | None:
        conn = self.hook.get_conn()
        cursor = conn.cursor()
        try:
            cursor.execute(f"SELECT * FROM {self.dialect.table(table)} WHERE 1 = 0")
            names = {d[0].lower() for d in cursor.description or ()}
            cursor.fetchall()
            return names
        except Exception:
            _rollback(conn)
            return None
        finally:
            cursor.close()
            conn.close()

    def _create(self, table: TableName, primary_key: bool, indexes: bool = False) -> None:
        q = self.dialect.quote
        cols = [
            f"{q(c.name)} {self.dialect.types[c.type]}{'' if c.nullable and c.name != self.spec.key else ' NOT NULL'}"
            for c in self.spec.columns
        ]
        if primary_key and self.spec.key:
            cols.append(f"PRIMARY KEY ({q(self.spec.key)})")
        statements = [f"CREATE TABLE {self.dialect.table(table)} ({', '.join(cols)})"]
        if indexes:
            for column in self.spec.indexes:
                index = q(f"{table.name[:40]}_{column}_idx")
                statements.append(f"CREATE INDEX {index} ON {self.dialect.table(table)} ({q(column)})")
        self._execute(statements)

    def _drop(self, table: TableName) -> None:
        try:
            self._execute([f"DROP TABLE {self.dialect.table(table)}"])
        except Exception:  # the original error matters more than a leftover staging table
            log.warning("Could not drop staging table %s", table, exc_info=True)

    def _execute(self, statements: Sequence[str | tuple[str, tuple]]) -> list[int]:
        """Run statements on one connection in one transaction; return first column of count queries."""
        results: list[int] = []

        def run(cursor: Any) -> None:
            for statement in statements:
                sql, params = (statement, None) if isinstance(statement, str) else statement
                cursor.execute(sql, params) if params else cursor.execute(sql)
                if sql.lstrip().upper().startswith("SELECT"):
                    results.append(int(cursor.fetchone()[0]))

        self._in_transaction(run)
        return results

    # ------------------------------------------------------------------ load
    def _load(self, frame: pd.DataFrame, table: TableName) -> None:
        if frame.empty:
            return
        if self.dialect.load == "insert_rows":
            for rows in self._row_chunks(frame):
                self.hook.insert_rows(
                    str(table), rows, target_fields=self.spec.names, commit_every=self.chunk_size
                )
            return
        self._in_transaction(lambda cursor: self._load_with(cursor, frame, table))

    def _in_transaction(self, work: Callable[[Any], None]) -> None:
        """Run ``work(cursor)`` on one connection and commit, or roll back and re-raise."""
        conn = self.hook.get_conn()
        cursor = conn.cursor()
        try:
            work(cursor)
            conn.commit()
        except Exception:
            _rollback(conn)
            raise
        finally:
            cursor.close()
            conn.close()

    def _load_with(self, cursor: Any, frame: pd.DataFrame, table: TableName) -> None:
        """Bulk-load ``frame`` through ``cursor`` (no commit): COPY on PostgreSQL, else executemany."""
        names = ", ".join(self.dialect.quote(n) for n in self.spec.names)
        if self.dialect.load == "copy":
            sql = f"COPY {self.dialect.table(table)} ({names}) FROM STDIN WITH (FORMAT csv)"
            cursor.execute("SET LOCAL TIME ZONE 'UTC'")  # the CSV's timestamps carry no offset
            if hasattr(cursor, "copy"):  # psycopg 3
                with cursor.copy(sql) as copy:
                    for chunk in self._chunks(frame):
                        copy.write(copy_csv(chunk, self.spec))
            else:  # psycopg2
                for chunk in self._chunks(frame):
                    cursor.copy_expert(sql, io.BytesIO(copy_csv(chunk, self.spec)))
            return
        marks = ", ".join([self.dialect.placeholder] * len(self.spec.names))
        sql = f"INSERT INTO {self.dialect.table(table)} ({names}) VALUES ({marks})"
        for rows in self._row_chunks(frame):
            cursor.executemany(sql, rows)

    def _replace_in_one_transaction(self, frame: pd.DataFrame, summary: WriteSummary) -> None:
        """Empty the table and load ``frame`` in one transaction: readers see the old rows until commit.

        Loading straight into the target (no staging copy) writes the data once; the counts come
        from comparing key sets, read before the change.
        """
        key = self.spec.key or ""
        table_sql = self.dialect.table(self.table)
        old_keys = np.asarray(
            [row[0] for row in self.hook.get_records(f"SELECT {self.dialect.quote(key)} FROM {table_sql}")]
        )
        new_keys = frame[key].to_numpy()
        kept = len(np.intersect1d(old_keys, new_keys, assume_unique=True))  # keys are unique
        summary.inserted = len(new_keys) - kept
        summary.removed = len(old_keys) - kept

        def delete_then_load(cursor: Any) -> None:
            cursor.execute(f"DELETE FROM {table_sql}")
            if not frame.empty:
                self._load_with(cursor, frame, self.table)

        self._in_transaction(delete_then_load)

    def _chunks(self, frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
        for start in range(0, len(frame), self.chunk_size):
            yield frame.iloc[start : start + self.chunk_size]

    def _row_chunks(self, frame: pd.DataFrame) -> Iterator[list[tuple]]:
        for chunk in self._chunks(frame):
            columns = [self._db_values(chunk[c.name], c) for c in self.spec.columns]
            yield list(zip(*columns, strict=True))

    def _db_values(self, series: pd.Series, column: Column) -> list[Any]:
        """Python values the driver understands, with None for missing."""
        if column.type == "timestamp":
            stamps = pd.to_datetime(series, utc=True)
            if self.dialect.timestamps == "iso_text":
                values = stamps.dt.strftime(ISO_FORMAT).astype(object)
            elif self.dialect.timestamps == "naive_utc":
                values = pd.Series(
                    stamps.dt.tz_convert(None).dt.to_pydatetime(), index=series.index, dtype=object
                )
            else:
                values = pd.Series(stamps.dt.to_pydatetime(), index=series.index, dtype=object)
            return [None if pd.isna(v) else v for v in values]
        if column.type in ("bigint", "int"):
            return [None if pd.isna(v) else int(v) for v in series.astype(object)]
        return [
            None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else str(v) for v in series
        ]

    # ------------------------------------------------------------------ apply
    def _apply(self, staging: TableName, mode: WriteMode, now: datetime, summary: WriteSummary) -> None:
        d, q = self.dialect, self.dialect.quote
        target, stage = d.table(self.table), d.table(staging)
        key = q(self.spec.key or "")
        cols = ", ".join(q(n) for n in self.spec.names)
        in_stage = f"EXISTS (SELECT 1 FROM {stage} s WHERE s.{key} = {target}.{key})"
        new_rows = f"NOT EXISTS (SELECT 1 FROM {target} t WHERE t.{key} = s.{key})"
        changed_terms = [d.differs(f"s.{q(c)}", f"{target}.{q(c)}") for c in self.spec.compared]
        soft = self.spec.soft_delete
        if soft:
            changed_terms.append(f"{target}.{q(soft)} IS NOT NULL")
        changed = (
            f"EXISTS (SELECT 1 FROM {stage} s WHERE s.{key} = {target}.{key} AND ({' OR '.join(changed_terms)}))"
            if changed_terms
            else "1 = 0"
        )
        gone = f"NOT {in_stage}" + (f" AND {q(soft)} IS NULL" if soft and mode == "upsert" else "")
        count_new = f"SELECT COUNT(*) FROM {stage} s WHERE {new_rows}"
        count_changed = f"SELECT COUNT(*) FROM {target} WHERE {changed}"
        count_gone = f"SELECT COUNT(*) FROM {target} WHERE {gone}"
        insert_new = f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} s WHERE {new_rows}"

        statements: list[str | tuple[str, tuple]] = [count_new, count_changed, count_gone]
        if mode == "replace":
            statements += [
                f"DELETE FROM {target}",
                f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage}",
            ]
        elif mode == "append":
            statements.append(insert_new)
        else:
            updatable = [n for n in self.spec.names if n != self.spec.key and n != soft]
            sets = [
                f"{q(n)} = (SELECT s.{q(n)} FROM {stage} s WHERE s.{key} = {target}.{key})" for n in updatable
            ]
            if soft:
                sets.append(f"{q(soft)} = NULL")
            statements.append(f"UPDATE {target} SET {', '.join(sets)} WHERE {changed}")
            statements.append(insert_new)
            if soft:
                stamp = self._db_values(pd.Series([now]), Column(soft, "timestamp"))[0]
                statements.append((f"UPDATE {target} SET {q(soft)} = {d.placeholder} WHERE {gone}", (stamp,)))
        new, changed_count, gone_count = self._execute(statements)
        summary.inserted = new
        summary.updated = changed_count if mode != "append" else 0
        summary.removed = gone_count if mode != "append" else 0


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


def _rollback(conn: Any) -> None:
    try:
        conn.rollback()
    except Exception:  # a broken connection cannot roll back; closing it discards the transaction
        log.debug("rollback failed", exc_info=True)
