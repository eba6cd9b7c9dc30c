"""SmsPartnerStopListToSqlOperator: lands the SMS Partner stop list in a table of any SQL database.

Import-light (parsed with every DAG): pandas and the warehouse writer load inside ``execute``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.utils.arguments import (
    DEFAULT_CHUNK_SIZE,
    WRITE_MODES,
    check_choice,
    check_count,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_smspartner.utils.sql_writer import TableSpec


def stop_list_table_spec() -> TableSpec:
    """The warehouse stop-list table. ``removed_at`` keeps the opt-out history in upsert mode."""
    from airflow_provider_smspartner.utils.sql_writer import Column, TableSpec

    return TableSpec(
        columns=(
            Column("stop_id", "bigint", nullable=False),
            Column("phone_number", "short_text"),
            Column("phone_e164", "short_text"),
            Column("created_at", "timestamp"),
            Column("extracted_at", "timestamp"),
            Column("removed_at", "timestamp"),
        ),
        key="stop_id",
        indexes=("phone_e164",),
        compared=("phone_number", "phone_e164", "created_at"),
        soft_delete="removed_at",
    )


class SmsPartnerStopListToSqlOperator(BaseOperator):
    """Extract the SMS Partner stop list into a table of any ``DbApiHook`` database.

    The table is created when missing (``stop_id`` key, index on ``phone_e164``, UTC timestamps;
    ISO-8601 text on SQLite). The whole list is fetched and checked complete before the database
    is touched, and the table changes in one transaction, so a failure leaves it as it was.

    :param sql_conn_id: Connection of the destination database (postgres, mysql, sqlite, any DbApiHook).
    :param table: Destination table, ``name`` or ``schema.name``. (templated)
    :param mode: ``replace`` (default): the table holds exactly the current list. ``upsert``: new stop
        ids inserted, changed rows updated, ids no longer on the list kept with ``removed_at`` set
        (cleared if they come back). ``append``: only stop ids not yet in the table.
    :param smspartner_conn_id: The ``smspartner`` connection. (templated)
    :param chunk_size: Rows per load chunk.
    :return: ``{"rows_in_list", "inserted", "updated", "removed", "table", "mode"}``.
    """

    template_fields: Sequence[str] = ("sql_conn_id", "table", "mode", "smspartner_conn_id")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        sql_conn_id: str,
        table: str,
        mode: str = "replace",
        smspartner_conn_id: str = SmsPartnerHook.default_conn_name,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sql_conn_id = sql_conn_id
        self.table = table
        self.mode = mode
        self.smspartner_conn_id = smspartner_conn_id
        self.chunk_size = chunk_size
        check_count("chunk_size", chunk_size, minimum=1)

    def execute(self, context: Context) -> dict[str, Any]:
        import pandas as pd

        from airflow_provider_smspartner.utils.sql_writer import SqlTableWriter, resolve_dbapi_hook

        check_choice("mode", self.mode, WRITE_MODES)  # templated: checked once rendered
        # A bad table name fails here, before the API is called.
        writer = SqlTableWriter(
            resolve_dbapi_hook(self.sql_conn_id), self.table, stop_list_table_spec(), self.chunk_size
        )

        frame = SmsPartnerHook(smspartner_conn_id=self.smspartner_conn_id).get_stop_list_df()
        self.log.info("Fetched %d stops from SMS Partner", len(frame))
        extracted_at = pd.Timestamp.now(tz="UTC").floor("s")
        frame["extracted_at"] = extracted_at
        frame["removed_at"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")

        written = writer.write(frame, self.mode, now=extracted_at.to_pydatetime())  # type: ignore[arg-type]
        summary = {
            "rows_in_list": len(frame),
            "inserted": written.inserted,
            "updated": written.updated,
            "removed": written.removed,
            "table": str(writer.table),
            "mode": self.mode,
        }
        self.log.info(
            "%s %s (%s): %d stops in the list; %d inserted, %d updated, %d removed%s",
            self.mode,
            writer.table,
            writer.dialect_name,
            summary["rows_in_list"],
            summary["inserted"],
            summary["updated"],
            summary["removed"],
            " (table created)" if written.created_table else "",
        )
        return summary
