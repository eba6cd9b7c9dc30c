"""The tables the extract writes, shared with what reads them: the stop-list table and its run log.

The gate (its guard's reference) and the event trigger (is the warehouse copy stale?) read the run
log the extract writes, so its shape and name live here, on the ground floor, not in the extract.
Import-light: SQLAlchemy loads only inside the functions that query.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_smspartner.utils.sql_writer import SqlTableWriter
    from airflow_provider_smspartner.utils.table_spec import TableSpec

#: ``run_log_table``'s default: ``{table}`` stands for the stop-list table (schema included).
DEFAULT_RUN_LOG_TABLE = "{table}_runs"


def stop_list_table_spec() -> TableSpec:
    """The warehouse stop-list table. ``removed_at`` keeps the opt-out history in upsert mode;
    ``first_seen_at`` is when the warehouse first saw the stop (set on insert, never updated,
    carried over by ``replace``).

    ``phone_number`` is unbounded text (``LONGTEXT`` on MySQL/MariaDB): the API may send any
    string, and a row the warehouse cannot take must not block the list.
    """
    from airflow_provider_smspartner.utils.table_spec import Column, TableSpec

    return TableSpec(
        columns=(
            Column("stop_id", "bigint", nullable=False),
            Column("phone_number", "long_text"),
            Column("phone_e164", "short_text"),
            Column("created_at", "timestamp"),
            Column("first_seen_at", "timestamp"),
            Column("extracted_at", "timestamp"),
            Column("removed_at", "timestamp"),
        ),
        key="stop_id",
        indexes=("phone_e164",),
        compared=("phone_number", "phone_e164", "created_at"),
        soft_delete="removed_at",
        first_seen="first_seen_at",
    )


def run_log_table_spec() -> TableSpec:
    """The run log: one row per extract run, applied or refused.

    ``status`` is ``applied`` (written in the change's transaction) or ``refused`` (the list was
    refused: ``reason`` holds the error; written on its own, the change rolled back). The counts
    are empty for a refused run, ``rows_in_list`` and ``list_sha256`` too when the answer itself
    was refused.
    """
    from airflow_provider_smspartner.utils.table_spec import Column, TableSpec

    return TableSpec(
        columns=(
            Column("dag_id", "text"),
            Column("run_id", "text"),
            Column("task_id", "text"),
            Column("try_number", "int"),
            Column("started_at", "timestamp"),
            Column("finished_at", "timestamp"),
            Column("mode", "short_text"),
            Column("status", "short_text"),
            Column("rows_in_list", "bigint"),
            Column("inserted", "bigint"),
            Column("updated", "bigint"),
            Column("removed", "bigint"),
            Column("list_sha256", "short_text"),
            Column("reason", "long_text"),
        )
    )


def run_log_table_name(table: str, run_log_table: str = DEFAULT_RUN_LOG_TABLE) -> str:
    """``run_log_table`` with ``{table}`` replaced by ``table``; a name part over 63 characters is
    cut and given a hash of the whole, as the staging tables are."""
    from airflow_provider_smspartner.utils.table_spec import fit_identifier

    name = run_log_table.replace("{table}", table.strip())
    schema, _, last = name.rpartition(".")
    last = fit_identifier(last)
    return f"{schema}.{last}" if schema else last


@dataclass(frozen=True)
class ListCheck:
    """A past look at the list that a later run compares with: how many stops it held, and its
    fingerprint, when and where it was recorded."""

    rows_in_list: int
    list_sha256: str | None
    at: datetime | None
    source: str


def latest_row(
    writer: SqlTableWriter, conditions: dict[str, Any], order_by: str, source: str
) -> ListCheck | None:
    """The newest row of ``writer``'s table matching ``conditions`` (``{column: value}``), by
    ``order_by`` (ties: the most stops), as a :class:`ListCheck`; ``None`` when the table is
    missing or has no such row.

    :param source: How the result names where it came from (e.g. ``"audit table x"``).
    """
    import sqlalchemy as sa

    table = writer.sql_table
    with writer.engine.connect() as conn:
        if not sa.inspect(conn).has_table(writer.table.name, schema=writer.table.schema):
            return None
        query = (
            sa.select(table.c.rows_in_list, table.c.list_sha256, table.c[order_by])
            .where(*(table.c[name] == value for name, value in conditions.items()))
            .where(table.c.rows_in_list.is_not(None))
            # Two rows of one instant (SQLite keeps whole seconds): the larger list is the
            # reference, so a tie can only make the guard stricter.
            .order_by(table.c[order_by].desc(), table.c.rows_in_list.desc())
            .limit(1)
        )
        row = conn.execute(query).first()
    if row is None:
        return None
    return ListCheck(int(row[0]), row[1], row[2], source)


def last_applied_run(
    conn_id: str, table: str, run_log_table: str = DEFAULT_RUN_LOG_TABLE
) -> ListCheck | None:
    """The last run the extract applied to ``table`` (its run log's newest ``applied`` row by
    ``finished_at``), or ``None`` when there is no run log or no applied run yet.

    :param conn_id: The warehouse connection of ``table``.
    :param run_log_table: The run log's name, as the extract's argument (``{table}`` = ``table``).
    """
    from airflow_provider_smspartner.utils.sql_writer import SqlTableWriter, resolve_dbapi_hook

    name = run_log_table_name(table, run_log_table)
    writer = SqlTableWriter(resolve_dbapi_hook(conn_id), name, run_log_table_spec())
    return latest_row(writer, {"status": "applied"}, "finished_at", f"run log {name} of table {table}")
