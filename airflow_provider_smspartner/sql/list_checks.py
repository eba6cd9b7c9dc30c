"""Past looks at the list that a later run compares with, read back from the provider's tables:
the extract's run log (:func:`last_applied_run`: the gate's guard, the event trigger) and the
suppression audit table (:func:`latest_row`). Import-light: SQLAlchemy loads inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_smspartner.sql.tables import (
    DEFAULT_RUN_LOG_TABLE,
    run_log_table_name,
    run_log_table_spec,
)

if TYPE_CHECKING:
    from airflow_provider_smspartner.sql.writer import SqlTableWriter


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
    from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
    from airflow_provider_smspartner.sql.writer import SqlTableWriter

    name = run_log_table_name(table, run_log_table)
    writer = SqlTableWriter(resolve_dbapi_hook(conn_id), name, run_log_table_spec())
    return latest_row(writer, {"status": "applied"}, "finished_at", f"run log {name} of table {table}")
