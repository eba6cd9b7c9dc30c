"""Push CRM unsubscribes to the SMS Partner stop list whenever the CRM export lands.

``crm_unsubscribes_export`` stands for the upstream job that refreshes the ``crm_unsubscribes``
table; it publishes the ``crm_unsubscribes`` Asset. ``smspartner_sync_unsubscribes`` is scheduled
on that Asset: it reads the numbers with SQL, normalises and de-duplicates them, skips those
already on the list, adds the rest, and writes one outcome row per input number to
``smspartner_add_results`` (invalid, duplicate, skipped_existing, added, already_present, failed).
Re-runs are idempotent: numbers already added are skipped.

Connections: ``smspartner_default`` and ``warehouse`` (override with
``SMSPARTNER_EXAMPLE_SQL_CONN_ID``).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import Asset, dag, task

from airflow_provider_smspartner.operators.smspartner import SmsPartnerAddStopsOperator

SQL_CONN_ID = os.environ.get("SMSPARTNER_EXAMPLE_SQL_CONN_ID", "warehouse")
CRM_UNSUBSCRIBES = Asset("crm_unsubscribes")


@dag(
    dag_id="crm_unsubscribes_export",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["smspartner", "example"],
)
def crm_unsubscribes_export():
    @task(outlets=[CRM_UNSUBSCRIBES])
    def export_unsubscribes() -> None:
        """Placeholder for the CRM export that fills ``crm_unsubscribes``; it signals the Asset."""

    export_unsubscribes()


@dag(
    dag_id="smspartner_sync_unsubscribes",
    schedule=[CRM_UNSUBSCRIBES],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["smspartner", "example"],
    doc_md=__doc__,
)
def smspartner_sync_unsubscribes():
    SmsPartnerAddStopsOperator(
        task_id="add_unsubscribes_to_stop_list",
        sql="SELECT phone FROM crm_unsubscribes",
        sql_conn_id=SQL_CONN_ID,
        results_table="smspartner_add_results",
        max_failed=0,
        pool="smspartner_api",
    )


crm_unsubscribes_export()
smspartner_sync_unsubscribes()
