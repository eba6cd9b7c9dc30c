"""What PostgreSQL does its own way, faster than the generic statements: ``COPY``, truncate and
rebuild, one-pass counts and key reads. Functions of an open connection (inside the writer's
transaction: none commits) and explicit tables, called by the writer when ``hook.dialect_name``
is ``postgresql``.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_smspartner.sql.copy_encoding import (
    BINARY_PG_TYPES,
    BINARY_SIGNATURE,
    BINARY_TRAILER,
    PG_EPOCH_MICROS,
    copy_binary,
    copy_csv,
)
from airflow_provider_smspartner.sql.tables import TableSpec

log = logging.getLogger(__name__)

#: Memory a keyed write allows itself, for its transaction only (never lowered): a million keys
#: hash (upsert's joins) and sort (replace's index builds) without temporary files.
#: ``temp_buffers`` keeps a million-row staging table in memory (it only takes effect in a session
#: that has not used a temporary table yet: the writer's connections are fresh).
_MEMORY = {"work_mem": "256MB", "maintenance_work_mem": "256MB", "temp_buffers": "256MB"}


def quoted(conn: Connection, table: sa.Table) -> str:
    """``table``'s name, schema-qualified and quoted as the database needs."""
    return str(conn.dialect.identifier_preparer.format_table(table))


def _oid(conn: Connection, table: sa.Table) -> int:
    query = sa.text("SELECT CAST(CAST(:name AS regclass) AS oid)")
    return int(conn.execute(query, {"name": quoted(conn, table)}).scalar_one())


def raise_memory(conn: Connection) -> None:
    """For this transaction only, never lowered: hash joins of a million keys and index builds
    in memory rather than in temporary files (PostgreSQL's defaults are 4 MB and 64 MB)."""
    for setting, size in _MEMORY.items():
        conn.execute(
            sa.text(
                "SELECT set_config(:setting, :size, true) "
                "WHERE pg_size_bytes(current_setting(:setting)) < pg_size_bytes(:size)"
            ),
            {"setting": setting, "size": size},
        )


# ---------------------------------------------------------------------------------- COPY
def copy_chunks(
    conn: Connection,
    table: sa.Table,
    spec: TableSpec,
    chunks: Iterable[pd.DataFrame],
    prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> None:
    """``COPY`` ``chunks`` (frames with ``spec``'s columns, once through ``prepare`` if given)
    into ``table`` on the driver connection under ``conn``, so it joins its transaction.

    Binary when the table's columns have exactly the types binary COPY encodes (the writer's own
    tables do), else CSV (which PostgreSQL casts). A thread prepares and encodes the next chunk
    while the database takes the current one: the driver waits for the socket without holding
    the GIL, so even Python-bound preparation (keyed hashing) overlaps the database's work.
    """
    quote = conn.dialect.identifier_preparer
    columns = ", ".join(quote.quote(n) for n in spec.names)
    binary = _takes_binary(conn, table, spec)
    options = "FORMAT binary" if binary else "FORMAT csv"
    sql = f"COPY {quote.format_table(table)} ({columns}) FROM STDIN WITH ({options})"
    head, tail = (BINARY_SIGNATURE, BINARY_TRAILER) if binary else (b"", b"")
    encoder_of = copy_binary if binary else copy_csv

    def encode(chunk: pd.DataFrame) -> bytes:
        return encoder_of(chunk if prepare is None else prepare(chunk), spec)

    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute("SET LOCAL TIME ZONE 'UTC'")  # the CSV's timestamps carry no offset
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="smspartner-copy") as encoder:
            payloads = _encoded(chunks, encode, encoder)
            if hasattr(cursor, "copy"):  # psycopg 3: one COPY
                with cursor.copy(sql) as copy:
                    copy.write(head)
                    for data in payloads:
                        copy.write(data)
                    copy.write(tail)
            else:  # psycopg2: a COPY per chunk
                for data in payloads:
                    cursor.copy_expert(sql, io.BytesIO(head + data + tail))
    finally:
        cursor.close()


def _takes_binary(conn: Connection, table: sa.Table, spec: TableSpec) -> bool:
    rows = conn.execute(
        sa.text(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = CAST(:name AS regclass) AND attnum > 0 AND NOT attisdropped"
        ),
        {"name": quoted(conn, table)},
    ).all()
    found = {str(name).lower(): kind for name, kind in rows}
    return all(found.get(c.name.lower()) in BINARY_PG_TYPES[c.type] for c in spec.columns)


def _encoded(
    chunks: Iterable[pd.DataFrame], encode: Callable[[pd.DataFrame], bytes], encoder: ThreadPoolExecutor
) -> Iterator[bytes]:
    """``chunks`` encoded for COPY, each on ``encoder`` while the previous one is sent."""
    pending: Future[bytes] | None = None
    for chunk in chunks:
        future = encoder.submit(encode, chunk)
        if pending is not None:
            yield pending.result()
        pending = future
    if pending is not None:
        yield pending.result()


def duplicated_key_values(exc: sa.exc.IntegrityError) -> list[str]:
    """The key values a failed unique index build reports as duplicated (``Key (k)=(v) is
    duplicated``), as text; empty when the error says none."""
    detail = getattr(getattr(exc.orig, "diag", None), "message_detail", None) or ""
    return re.findall(r"=\((.*)\) is duplicated", detail)


# ---------------------------------------------------------------------------------- replace
def lock_for_replace(conn: Connection, table: sa.Table) -> None:
    """Lock other writers of ``table`` out until the commit (``SHARE ROW EXCLUSIVE``, which
    readers pass), so what ``replace`` reads of it holds until then."""
    conn.exec_driver_sql(f"LOCK TABLE {quoted(conn, table)} IN SHARE ROW EXCLUSIVE MODE")


def can_rebuild(conn: Connection, table: sa.Table) -> bool:
    """Whether ``table`` can be truncated and its indexes rebuilt: a plain table (a partitioned
    one keeps its indexes on the partitions), that no foreign key references (TRUNCATE refuses
    those), owned by the writer's role (only an owner drops and builds indexes) which may
    TRUNCATE it. Otherwise ``replace`` deletes and loads, indexes in place."""
    kind, owner, may_truncate, referenced = conn.execute(
        sa.text(
            "SELECT relkind, pg_has_role(relowner, 'USAGE'), has_table_privilege(oid, 'TRUNCATE'), "
            "EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f' AND confrelid = c.oid) "
            "FROM pg_class c WHERE oid = :oid"
        ),
        {"oid": _oid(conn, table)},
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
        log.info("%s is %s: replaced with DELETE + COPY, indexes in place", table.fullname, reason)
    return reason is None


def reload(conn: Connection, table: sa.Table, fill: Callable[[], str]) -> None:
    """The fastest way to a table holding only what ``fill`` loads (it returns how much, for the
    log), in the write's transaction: ``TRUNCATE`` (same table: views, grants, triggers, comments
    stay), drop the indexes, ``fill``, then rebuild each index and key from its own definition
    (``pg_get_indexdef``, ``pg_get_constraintdef``), replica identity and clustering included.
    WAL-logged as any write. Building an index once over sorted input costs a fraction of
    maintaining it row by row. ``TRUNCATE`` holds an ``ACCESS EXCLUSIVE`` lock until the commit:
    readers wait during the load and the index build instead of seeing the old rows."""
    target = quoted(conn, table)
    quote = conn.dialect.identifier_preparer
    indexes = conn.execute(
        sa.text(
            "SELECT CAST(CAST(i.indexrelid AS regclass) AS text), pg_get_indexdef(i.indexrelid), "
            "c.conname, pg_get_constraintdef(c.oid), i.indisreplident, i.indisclustered "
            "FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid "
            "AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x') "
            "WHERE i.indrelid = :oid ORDER BY c.contype = 'p' DESC, i.indexrelid"
        ),
        {"oid": _oid(conn, table)},
    ).all()
    conn.exec_driver_sql(f"TRUNCATE TABLE {target}")
    truncated = time.monotonic()
    for name, _, constraint, _, _, _ in indexes:
        if constraint:
            conn.exec_driver_sql(f"ALTER TABLE {target} DROP CONSTRAINT {quote.quote(constraint)}")
        else:
            conn.exec_driver_sql(f"DROP INDEX {name}")
    loaded = fill()
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
        table.fullname,
        loaded,
        len(indexes),
        time.monotonic() - truncated,
    )


def existing_rows(
    conn: Connection, table: sa.Table, key: str, soft_delete: str | None, first_seen: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``table``'s integer keys, live flags (``soft_delete`` empty) and ``first_seen`` values
    (naive UTC ``datetime64[us]``, NaT when missing), as ``bytea`` aggregates of one scan (so in
    the same row order): big-endian keys and ``first_seen`` in PostgreSQL's binary form; live
    flags, a byte a row, only when some rows are soft-deleted. A million rows in 0.2 s, against
    4 s row by row."""
    quote = conn.dialect.identifier_preparer
    key_q, soft, seen = (quote.quote(n) if n else None for n in (key, soft_delete, first_seen))
    name = quoted(conn, table)
    aggregates = [f"string_agg(int8send(CAST({key_q} AS bigint)), ''::bytea)"]
    if seen:
        # A missing first_seen becomes PostgreSQL's smallest timestamp (-infinity): NaT below.
        stamp = f"COALESCE(timestamptz_send({seen}), decode('8000000000000000', 'hex'))"
        aggregates.append(f"string_agg({stamp}, ''::bytea)")
    aggregates.append(f"count(*) FILTER (WHERE {soft} IS NOT NULL)" if soft else "0")
    row = conn.exec_driver_sql(f"SELECT {', '.join(aggregates)} FROM {name}").one()
    keys = np.frombuffer(row[0] or b"", dtype=">i8").astype(np.int64)
    flags = np.ones(len(keys), dtype=bool)
    if row[-1]:
        flag = f"CASE WHEN {soft} IS NULL THEN decode('01', 'hex') ELSE decode('00', 'hex') END"
        live = conn.exec_driver_sql(f"SELECT string_agg({flag}, ''::bytea ORDER BY {key_q}) FROM {name}")
        order = np.argsort(keys, kind="stable")
        flags[order] = np.frombuffer(live.scalar_one(), dtype=np.uint8).astype(bool)
    stamps = None
    if seen:
        raw = np.frombuffer(row[1] or b"", dtype=">i8").astype(np.int64)
        unknown = (raw == np.iinfo(np.int64).min) | (raw == np.iinfo(np.int64).max)  # +-infinity
        stamps = np.where(unknown, np.iinfo(np.int64).min, raw + PG_EPOCH_MICROS).view("datetime64[us]")
    return keys, flags, stamps


def count_changes(
    conn: Connection,
    staging: sa.Table,
    target: sa.Table,
    key: str,
    soft_delete: str | None,
    differs: Any,
    replace: bool,
) -> tuple[int, int, int, int, int] | None:
    """``(inserted, updated, removed, live, live_removed)`` of a keyed write from ``staging`` in one
    pass: a full join of staging and target counted with ``FILTER`` (instead of a join per
    count). ``replace`` removes every row whose key is not staged, soft-deleted or not; ``upsert``
    only the live ones. None when the target is empty (a first load: nothing to join).

    :param differs: When a joined target row differs from its staging row (or None: never).
    """
    if not conn.execute(sa.select(sa.exists().select_from(target))).scalar_one():
        return None
    present, listed = target.c[key].is_not(None), staging.c[key].is_not(None)
    live = present & target.c[soft_delete].is_(None) if soft_delete else present
    counts = [
        sa.func.count().filter(~present),
        sa.func.count().filter(present & listed & differs) if differs is not None else sa.literal(0),
        sa.func.count().filter((present if replace else live) & ~listed),
        sa.func.count().filter(live),
        sa.func.count().filter(live & ~listed),
    ]
    joined = staging.join(target, staging.c[key] == target.c[key], full=True)
    inserted, updated, removed, live_rows, live_removed = (
        int(v) for v in conn.execute(sa.select(*counts).select_from(joined)).one()
    )
    return inserted, updated, removed, live_rows, live_removed
