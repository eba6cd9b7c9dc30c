"""How a keyed write changes its target: the counts handed to the guard, then set-based
statements from a staging table (``upsert``, ``append``; ``replace``'s ``first_seen`` carried
over), or, for ``replace`` of one frame, the same counts from the target's keys compared in
memory. Generic SQLAlchemy Core; PostgreSQL counts in one pass (:func:`.postgres.count_changes`)
and reads keys as binary aggregates (:func:`.postgres.existing_rows`). Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from airflow_provider_smspartner.sql import postgres
from airflow_provider_smspartner.sql.tables import TableSpec
from airflow_provider_smspartner.sql.types import MYSQL, naive_utc

WriteMode = Literal["replace", "upsert", "append", "insert"]


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


@dataclass
class WriteSummary:
    """What a write did: rows ``inserted``, ``updated`` (changed or back on the list), ``removed``."""

    inserted: int = 0
    updated: int = 0
    removed: int = 0
    created_table: bool = False


#: Called with the counts before the target changes; raises to refuse the write.
Guard = Callable[[RemovalCounts], None]
#: Called on the write's connection after the target changed, before the commit (e.g. a log row).
BeforeCommit = Callable[[Connection, WriteSummary], None]


def chain_before_commit(*callbacks: BeforeCommit | None) -> BeforeCommit | None:
    """One ``before_commit`` that calls each of ``callbacks`` in order (None ones left out), e.g. a
    check that may refuse the change, then a log row; None when there is none."""
    chained = [callback for callback in callbacks if callback is not None]
    if not chained:
        return None

    def run_all(conn: Connection, summary: WriteSummary) -> None:
        for callback in chained:
            callback(conn, summary)

    return run_all


def count_rows(conn: Connection, table: sa.Table, where: Any = None) -> int:
    query = sa.select(sa.func.count()).select_from(table)
    return int(conn.execute(query if where is None else query.where(where)).scalar_one())


@dataclass(frozen=True)
class Staged:
    """A keyed write's rows in ``staging``, on their way to ``target`` (shaped by ``spec``)."""

    target: sa.Table
    staging: sa.Table
    spec: TableSpec
    dialect_name: str

    @property
    def key(self) -> str:
        return self.spec.key or ""

    def count(
        self, conn: Connection, mode: WriteMode, summary: WriteSummary, guard: Guard | None, incoming: int
    ) -> None:
        """Fill ``summary``'s counts for ``mode``, then call ``guard`` (not in ``append``). Without
        a key (streamed writes only): every staged row is inserted; ``replace`` removes every row."""
        target, staging = self.target, self.staging
        if not self.key:
            summary.inserted = incoming
            if mode == "replace":
                summary.removed = count_rows(conn, target)
                if guard is not None:
                    guard(RemovalCounts(summary.removed, summary.removed, incoming))
            return
        is_new, changed, gone = self._conditions(mode)
        if mode == "append":  # new keys only: an anti-join
            summary.inserted = count_rows(conn, staging, is_new)
            return
        if self.dialect_name == "postgresql":
            counts = postgres.count_changes(
                conn, staging, target, self.key, self.spec.soft_delete, self._differs(), mode == "replace"
            )
            if counts is None:  # an empty target
                summary.inserted = incoming
                return
            summary.inserted, summary.updated, summary.removed, live, removed = counts
            if guard is not None:
                guard(RemovalCounts(live, removed, incoming))
        else:
            summary.inserted = count_rows(conn, staging, is_new)
            summary.updated = count_rows(conn, target, changed)
            summary.removed = count_rows(conn, target, gone)
            if guard is not None:
                guard(self._removal_counts(conn, mode, summary.removed, gone, incoming))
        if mode == "upsert" and not self.spec.soft_delete:
            summary.removed = 0  # keys absent from the data stay as they are: nothing to stamp

    def _removal_counts(
        self, conn: Connection, mode: WriteMode, removed: int, gone: Any, incoming: int
    ) -> RemovalCounts:
        soft = self.spec.soft_delete
        live = self.target.c[soft].is_(None) if soft else sa.true()
        # upsert's ``gone`` already counts live rows only.
        if not (mode == "upsert" and soft):
            removed = count_rows(conn, self.target, gone & live)
        return RemovalCounts(count_rows(conn, self.target, live), removed, incoming)

    def carry_first_seen(self, conn: Connection) -> None:
        """``replace`` from staging: the staged rows of keys already in the target take the
        target's ``first_seen`` value."""
        target, staging, first_seen = self.target, self.staging, self.spec.first_seen
        if not first_seen or not self.key:
            return
        same_key = staging.c[self.key] == target.c[self.key]
        stored = sa.select(target.c[first_seen]).where(same_key).scalar_subquery()
        carry = sa.exists().where(same_key, target.c[first_seen].is_not(None))
        conn.execute(sa.update(staging).where(carry).values({first_seen: stored}))

    def insert_new(self, conn: Connection, summary: WriteSummary) -> None:
        """``append``: the staged rows whose key the target lacks (every staged row without a key)."""
        if summary.inserted:
            conn.execute(self.copy_rows(self._conditions("append")[0] if self.key else None))

    def upsert(self, conn: Connection, now: datetime, summary: WriteSummary) -> None:
        """Update changed rows (clearing the soft delete), add new ones, then stamp the gone with ``now``."""
        target, staging, key = self.target, self.staging, self.key
        soft, first_seen = self.spec.soft_delete, self.spec.first_seen
        is_new, changed, gone = self._conditions("upsert")
        same_key = staging.c[key] == target.c[key]
        names = [n for n in self.spec.names if n not in (key, soft, first_seen)]
        updates: dict[str, Any]
        if self.dialect_name == "postgresql" or self.dialect_name in MYSQL:
            # UPDATE ... FROM staging (MySQL: a multiple-table UPDATE): one join.
            updates = {n: staging.c[n] for n in names}
            where = sa.and_(same_key, self._differs()) if summary.updated else sa.false()
        else:
            updates = {n: sa.select(staging.c[n]).where(same_key).scalar_subquery() for n in names}
            where = changed
        if soft:
            updates[soft] = sa.null()
        if summary.updated:
            conn.execute(sa.update(target).where(where).values(updates))
        if summary.inserted:
            conn.execute(self.copy_rows(is_new))
        if soft and summary.removed:
            conn.execute(sa.update(target).where(gone).values({soft: now}))

    def staged_keys(self, conn: Connection, keys: list[Any], limit: int = 5) -> list[Any]:
        """Up to ``limit`` of ``keys`` already in staging (a key an earlier chunk sent)."""
        column = self.staging.c[self.key]
        found: list[Any] = []
        for start in range(0, len(keys), 500):
            query = sa.select(column).where(column.in_(keys[start : start + 500])).limit(limit)
            found += conn.execute(query).scalars().all()
            if len(found) >= limit:
                break
        return found[:limit]

    def copy_rows(self, where: Any = None) -> sa.Insert:
        """``INSERT INTO target SELECT ... FROM staging [WHERE where]``."""
        names = self.spec.names
        rows = sa.select(*(self.staging.c[n] for n in names))
        return sa.insert(self.target).from_select(names, rows if where is None else rows.where(where))

    def _conditions(self, mode: WriteMode) -> tuple[Any, Any, Any]:
        """``(is_new, changed, gone)``: staging rows whose key the target lacks; target rows whose
        compared columns differ from staging (NULL-safe) or that come back from a soft delete;
        target rows whose key staging lacks (and, in ``upsert``, not soft-deleted yet)."""
        target, staging, soft = self.target, self.staging, self.spec.soft_delete
        same_key = staging.c[self.key] == target.c[self.key]
        is_new = ~sa.exists().where(same_key)
        differs = self._differs()
        changed = sa.exists().where(same_key, differs) if differs is not None else sa.false()
        gone = ~sa.exists().where(same_key)
        if soft and mode == "upsert":
            gone = sa.and_(gone, target.c[soft].is_(None))
        return is_new, changed, gone

    def _differs(self) -> Any:
        """A target row differs from its staging row: a compared column (NULL-safe), or it comes
        back from a soft delete. None when nothing can differ."""
        target, staging, soft = self.target, self.staging, self.spec.soft_delete
        differs = [staging.c[c].is_distinct_from(target.c[c]) for c in self.spec.compared]
        if soft:
            differs.append(target.c[soft].is_not(None))
        return sa.or_(*differs) if differs else None


# ---------------------------------------------------------------------------------- replace
@dataclass(frozen=True)
class Existing:
    """A target's rows as ``replace`` compares them: keys, live flags, ``first_seen`` (naive UTC)."""

    keys: np.ndarray
    live: np.ndarray
    first_seen: np.ndarray | None


def read_existing(conn: Connection, target: sa.Table, spec: TableSpec, dialect_name: str) -> Existing:
    """The target's keys, live flags (``soft_delete`` empty) and ``first_seen`` values (naive UTC
    ``datetime64[us]``), read on ``conn``. PostgreSQL with an integer key sends each column as one
    binary value; elsewhere the DBAPI cursor reads the rows (SQLAlchemy's per-row result
    processing would triple the time)."""
    key, soft, first_seen = spec.key or "", spec.soft_delete, spec.first_seen
    key_type = next(c.type for c in spec.columns if c.name == key)
    if dialect_name == "postgresql" and key_type in ("bigint", "int"):
        return Existing(*postgres.existing_rows(conn, target, key, soft, first_seen))
    live = sa.case((target.c[soft].is_(None), 1), else_=0) if soft else sa.literal(1)
    columns = [target.c[key], live]
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
    return Existing(keys, flags, stamps)


def compare_in_memory(
    frame: pd.DataFrame, old: Existing, spec: TableSpec, summary: WriteSummary, guard: Guard | None
) -> pd.DataFrame:
    """``replace`` of ``frame`` over a target holding ``old``: fill ``summary``, call ``guard``,
    and return ``frame`` with the ``first_seen`` values of keys still present carried over."""
    key, first_seen = spec.key or "", spec.first_seen
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
    return frame
