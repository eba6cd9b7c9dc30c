"""Suppress opted-out numbers just before a campaign is sent, against the live stop list.

The warehouse copy of the stop list can be a day old, and a STOP that arrived this morning is not
in it. This DAG gates a (simulated) SMS campaign on the list as it is now:

1. ``suppress_audience`` (``SmsPartnerSuppressAudienceOperator``, ``mode="filter"``) reads the
   campaign audience with SQL, fetches the live stop list once, normalises every number to E.164
   and writes the contacts that are safe to text to ``campaign_audience_safe`` (all their columns
   plus ``phone_e164``); the others go to ``campaign_audience_excluded`` with their reason
   (``stopped``, ``invalid``, ``duplicate``). One row in ``smspartner_suppression_audit`` records
   the check: run ids, time, the list's ``rows_in_list`` and ``list_sha256``, the counts and where
   the safe audience went, which is what an auditor asks for.
2. ``send_campaign`` stands for the send: it reads only the safe table.

Use ``mode="check"`` instead to fail the run when any audience number is on the list, without
writing an output (for an audience built elsewhere that must already be clean).

Connections: ``smspartner_default`` and ``warehouse`` (any SQL database; SQLite in the demo) with
a ``marketing_contacts`` table (``contact_id``, ``phone``). Override the warehouse id with
``SMSPARTNER_EXAMPLE_SQL_CONN_ID``.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime

from airflow.sdk import dag, task

from airflow_provider_smspartner.operators.smspartner import SmsPartnerSuppressAudienceOperator

SQL_CONN_ID = os.environ.get("SMSPARTNER_EXAMPLE_SQL_CONN_ID", "warehouse")
SAFE_TABLE = "campaign_audience_safe"


@dag(
    dag_id="smspartner_campaign_gate",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["smspartner", "example"],
    doc_md=__doc__,
)
def smspartner_campaign_gate():
    suppress = SmsPartnerSuppressAudienceOperator(
        task_id="suppress_audience",
        sql="SELECT contact_id, phone FROM marketing_contacts",
        sql_conn_id=SQL_CONN_ID,
        phone_column="phone",
        mode="filter",
        output_table=SAFE_TABLE,
        output_conn_id=SQL_CONN_ID,
        excluded_table="campaign_audience_excluded",
        audit_table="smspartner_suppression_audit",
        pool="smspartner_api",
    )

    @task
    def send_campaign(counts: dict) -> dict:
        """Placeholder for the send: it texts the safe audience only."""
        from airflow.sdk import BaseHook

        hook = BaseHook.get_connection(SQL_CONN_ID).get_hook()
        (recipients,) = hook.get_first(f"SELECT COUNT(*) FROM {SAFE_TABLE}")
        logging.getLogger(__name__).info("Would text %d contacts; suppression counts: %s", recipients, counts)
        return {"recipients": int(recipients), **counts}

    send_campaign(suppress.output)


smspartner_campaign_gate()
