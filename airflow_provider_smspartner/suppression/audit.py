"""The gate's audit table: one row per check, and the guard's first reference."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.sql.tables import audit_table_spec
from airflow_provider_smspartner.sql.writer import SqlTableWriter

if TYPE_CHECKING:
    from airflow_provider_smspartner.sql.list_checks import ListCheck


class AuditLog:
    """The audit table of the suppression runs, on connection ``conn_id``.

    Constructing it validates the name; :meth:`prepare` creates the table when missing (before
    any API call, so a missing privilege fails first); :meth:`append` adds one row in a
    transaction of its own; :meth:`latest_accepted` reads the guard's reference.
    """

    def __init__(self, conn_id: str, table: str) -> None:
        self.writer = SqlTableWriter(resolve_dbapi_hook(conn_id), table, audit_table_spec())
        self.table = str(self.writer.table)

    def prepare(self) -> None:
        self.writer.ensure_table()

    def append(self, row: dict[str, Any]) -> None:
        values = {name: row.get(name) for name in self.writer.spec.names}
        with self.writer.engine.begin() as conn:
            self.writer.insert_row(conn, values)

    def latest_accepted(self, dag_id: str | None, task_id: str) -> ListCheck | None:
        """The newest accepted check of task ``task_id`` of DAG ``dag_id`` (any run, any map
        index), or ``None``."""
        from airflow_provider_smspartner.sql.list_checks import latest_row

        return latest_row(
            self.writer,
            {"dag_id": dag_id, "task_id": task_id, "status": "accepted"},
            "checked_at",
            f"audit table {self.table} (last accepted check of {dag_id}.{task_id})",
        )
