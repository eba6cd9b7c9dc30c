"""A :class:`~.tables.TableSpec` as a SQLAlchemy ``Table`` (key, indexes, per-database types and
options), a staging table's name and its quiet drop, a table created when missing (other writers
creating it at the same moment), and the check and error of a table of another shape."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airflow_provider_smspartner.sql.names import TableName, fit_identifier
from airflow_provider_smspartner.sql.tables import TEXT_TYPES, TableSpec
from airflow_provider_smspartner.sql.types import sql_type

log = logging.getLogger(__name__)

#: Ends the name of a keyed write's staging table (see :func:`staging_name`).
STAGING_SUFFIX = "__stg_smspartner"
#: Tries at creating a table that another process may be creating at the same moment.
CREATE_ATTEMPTS = 4


class TableShapeError(ValueError):
    """A table exists without columns its spec needs (``missing``)."""

    def __init__(self, table: TableName, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            f"Table {table} exists but lacks column(s) {missing}; drop it or choose another table."
        )


def check_shape(inspector: Any, table: TableName, spec: TableSpec) -> None:
    """Refuse an existing ``table`` (seen through a SQLAlchemy inspector) that lacks a column of
    ``spec`` (names compared without case, as the databases fold them).

    :raises TableShapeError: naming the missing columns.
    """
    existing = {str(c["name"]).lower() for c in inspector.get_columns(table.name, schema=table.schema)}
    missing = [c for c in spec.names if c.lower() not in existing]
    if missing:
        raise TableShapeError(table, missing)


def ensure_with_retries(engine: Engine, table: TableName, ensure: Callable[[Connection], bool]) -> bool:
    """``ensure`` (create ``table`` unless it exists; True if it did) in a transaction of its own,
    tried again when it fails while another process creates the table at the same moment (mapped
    tasks): a failed ``CREATE`` whose table is there then finds it and goes on. An existence check
    that fails (no privilege, lost connection) raises its own error, never taken for a missing
    table; a creation that keeps failing with no table there raises its error after
    :data:`CREATE_ATTEMPTS` tries."""
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            with engine.begin() as conn:
                return ensure(conn)
        except sa.exc.DBAPIError:
            if attempt == CREATE_ATTEMPTS:
                raise
            with engine.connect() as conn:
                created_meanwhile = sa.inspect(conn).has_table(table.name, schema=table.schema)
            if not created_meanwhile:
                time.sleep(0.1 * attempt)  # e.g. SQLite locked by the other creator
    raise AssertionError("unreachable")


def staging_name(table: TableName) -> TableName:
    """The staging table of a keyed write into ``table``: one fixed name per target, so a run finds
    and drops what a crashed run left (at most one: only MySQL/MariaDB, whose DDL is not
    transactional, and the generic path can leave one). Within 63 characters; a long name is cut
    and given a hash of the whole, so two long names that share a prefix never share one."""
    return table.with_name(fit_identifier(table.name, STAGING_SUFFIX))


def define_table(
    metadata: sa.MetaData, name: TableName, spec: TableSpec, *, indexes: bool, temporary: bool = False
) -> sa.Table:
    """``spec`` as a Table named ``name`` in ``metadata``; its key columns are the primary key.

    :param indexes: Give it the spec's secondary indexes (a staging table has none).
    :param temporary: A temporary table (no schema), on PostgreSQL dropped at the latest on commit.

    MySQL/MariaDB: InnoDB (the writes are transactions), ``utf8mb4`` (any text a source sends,
    whatever the server's default), dynamic rows (keys up to 3,072 bytes), and a binary collation
    when the spec asks for one.
    """
    keys = spec.key_columns
    options: dict[str, Any] = {"prefixes": ["TEMPORARY"], "postgresql_on_commit": "DROP"} if temporary else {}
    if spec.binary_text:
        options["mysql_collate"] = "utf8mb4_bin"
    table = sa.Table(
        name.name,
        metadata,
        *(
            sa.Column(
                c.name,
                sql_type(c, spec),
                primary_key=c.name in keys,
                nullable=c.nullable and c.name not in keys,
                autoincrement=False,  # keys come from the data: no SERIAL / AUTO_INCREMENT
            )
            for c in spec.columns
        ),
        schema=None if temporary else name.schema,
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_row_format="DYNAMIC",
        **options,
    )
    if indexes:
        types = {c.name: c.type for c in spec.columns}
        for column in spec.indexes:
            # Bytewise on PostgreSQL (see TableSpec): equality lookups, a faster build.
            ops = {column: "text_pattern_ops"} if types[column] in TEXT_TYPES else {}
            sa.Index(fit_identifier(f"{name.name}_{column}", "_idx"), table.c[column], postgresql_ops=ops)
    return table


def drop_quietly(table: sa.Table, bind: Engine | Connection) -> None:
    """Drop ``table`` if it exists, on a connection (then committed) or in a transaction of the
    engine's own; a failure is logged, not raised (the original error matters more, and the next
    run drops a staging table it finds)."""
    try:
        if isinstance(bind, Connection):
            table.drop(bind, checkfirst=True)
            bind.commit()
        else:
            with bind.begin() as own:
                table.drop(own, checkfirst=True)
    except Exception:
        log.warning("Could not drop staging table %s", table.fullname, exc_info=True)
