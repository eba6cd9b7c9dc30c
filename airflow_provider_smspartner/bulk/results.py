"""The results table of the bulk operators: one row per input value per run, appended through the warehouse writer."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from airflow_provider_smspartner.bulk.outcomes import OUTCOME_COLUMNS
from airflow_provider_smspartner.phone_numbers import phone_text
from airflow_provider_smspartner.utils.arguments import DEFAULT_CHUNK_SIZE
from airflow_provider_smspartner.utils.sql_writer import (
    Column,
    SqlTableWriter,
    TableSpec,
    resolve_dbapi_hook,
)

#: Shape of a results table. No key: every run appends its rows, so the table is the audit trail.
RESULTS_TABLE = TableSpec(
    columns=(
        Column("input_value", "text"),
        Column("phone_e164", "short_text"),
        Column("status", "short_text"),
        Column("stop_id", "bigint"),
        Column("error_code", "int"),
        Column("error_message", "text"),
        Column("processed_at", "timestamp"),
        # DAG ids may be 250 characters long, more than short_text holds.
        Column("dag_id", "text"),
        Column("run_id", "text"),
    ),
    indexes=("phone_e164",),
)


@dataclass(frozen=True)
class ResultsTable:
    """Where a bulk run writes its outcomes.

    :param conn_id: Connection of the database (any DbApiHook).
    :param table: ``name`` or ``schema.name``; created on first use.
    :param chunk_size: Rows per load chunk.
    """

    conn_id: str
    table: str
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def write(self, outcomes: pd.DataFrame, dag_id: str | None, run_id: str | None) -> int:
        """Append one row per row of ``outcomes`` (``OUTCOME_COLUMNS``), tagged with the run.

        :return: Rows written.
        """
        frame = outcomes.loc[:, list(OUTCOME_COLUMNS)].copy()
        # Inputs may mix str, int and float; the column is text, in the form that was normalised.
        frame["input_value"] = pd.array([phone_text(v) for v in frame["input_value"]], dtype="string")
        frame["dag_id"] = dag_id
        frame["run_id"] = run_id
        writer = SqlTableWriter(resolve_dbapi_hook(self.conn_id), self.table, RESULTS_TABLE, self.chunk_size)
        return writer.write(frame, "insert").inserted
