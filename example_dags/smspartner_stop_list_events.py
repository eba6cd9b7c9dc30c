"""Event-driven: refresh the stop list's warehouse copy, then the suppressed audience, once it is stale.

Instead of a daily schedule, the ``smspartner_live_stop_list`` Asset has a watcher:
``SmsPartnerStopListTrigger`` runs in the triggerer, polls the live list every 5 minutes (one
``stop-sms/list`` call, hashed, nothing kept) and compares its ``list_sha256`` with the last applied
extract in the run log of ``smspartner_stop_list`` (``smspartner_stop_list_runs``). When they
differ, the copy is stale: the trigger fires one event, which starts this DAG:

1. ``read_event`` logs what the trigger saw (the event's payload: ``list_sha256``,
   ``rows_in_list``, ``checked_at``, ``warehouse_list_sha256``; never a phone number).
2. ``extract_stop_list`` upserts the list into ``smspartner_stop_list``; its run log row makes the
   two fingerprints equal again, so the trigger falls quiet by itself until the list changes.
3. ``refresh_suppressed_audience`` checks the marketing audience against the list and rewrites
   ``marketing_audience_suppressed`` (the contacts safe to text) and
   ``marketing_audience_excluded`` (the others, with their reason), with an audit row in
   ``smspartner_audience_refresh_audit``.

The Asset is not ``smspartner_stop_list`` (the one the daily extract publishes): a watcher there
would also start that Asset's consumers, and the extract here publishes nothing, so its own run
cannot start the DAG again. Airflow runs the watcher only while this DAG is unpaused, and does not
replay what happened while it was paused; here the first poll after unpausing finds the stale copy
anyway. See ``docs/triggers.md`` (choosing ``poll_interval``, de-duplication, restarts).

Connections: ``smspartner_default`` and ``warehouse`` (any SQL database; SQLite in the demo) with a
``marketing_contacts`` table (``contact_id``, ``phone``). Override the warehouse id with
``SMSPARTNER_EXAMPLE_SQL_CONN_ID`` and the poll interval (seconds) with
``SMSPARTNER_EXAMPLE_POLL_INTERVAL``.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Any

from airflow.sdk import Asset, AssetWatcher, dag, task

from airflow_provider_smspartner.operators.smspartner import SmsPartnerSuppressAudienceOperator
from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator
from airflow_provider_smspartner.triggers.smspartner import SmsPartnerStopListTrigger

SQL_CONN_ID = os.environ.get("SMSPARTNER_EXAMPLE_SQL_CONN_ID", "warehouse")
#: Seconds between two polls of the list (a test deployment polls faster).
POLL_INTERVAL = float(os.environ.get("SMSPARTNER_EXAMPLE_POLL_INTERVAL", "300"))
STOP_LIST_TABLE = "smspartner_stop_list"
POOL = "smspartner_api"

LIVE_STOP_LIST = Asset(
    "smspartner_live_stop_list",
    watchers=[
        AssetWatcher(
            name="smspartner_stop_list_stale",
            trigger=SmsPartnerStopListTrigger(
                smspartner_conn_id="smspartner_default",
                poll_interval=POLL_INTERVAL,
                sql_conn_id=SQL_CONN_ID,
                table=STOP_LIST_TABLE,
            ),
        )
    ],
)


@dag(
    dag_id="smspartner_stop_list_events",
    schedule=[LIVE_STOP_LIST],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["smspartner", "example"],
    doc_md=__doc__,
)
def smspartner_stop_list_events():
    @task
    def read_event(triggering_asset_events=None) -> dict[str, Any]:
        """The newest event's payload (several events may be folded into one run); empty when the
        run was started by hand."""
        events = list(triggering_asset_events[LIVE_STOP_LIST]) if triggering_asset_events else []
        if not events:
            logging.getLogger(__name__).info("Started by hand: no trigger event to read")
            return {}
        newest = max(events, key=lambda event: event.timestamp)
        payload = dict(newest.extra.get("payload") or {})
        logging.getLogger(__name__).info("%d event(s); the newest saw %s", len(events), payload)
        return payload

    extract = SmsPartnerStopListToSqlOperator(
        task_id="extract_stop_list",
        sql_conn_id=SQL_CONN_ID,
        table=STOP_LIST_TABLE,
        mode="upsert",
        pool=POOL,
    )

    refresh = SmsPartnerSuppressAudienceOperator(
        task_id="refresh_suppressed_audience",
        sql="SELECT contact_id, phone FROM marketing_contacts",
        sql_conn_id=SQL_CONN_ID,
        phone_column="phone",
        mode="filter",
        output_table="marketing_audience_suppressed",
        excluded_table="marketing_audience_excluded",
        audit_table="smspartner_audience_refresh_audit",
        pool=POOL,
    )

    read_event() >> extract >> refresh


smspartner_stop_list_events()
