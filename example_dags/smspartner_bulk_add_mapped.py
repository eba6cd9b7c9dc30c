"""Bulk-add a very large input by splitting it across mapped tasks that share an Airflow Pool.

SMS Partner takes one number per request and documents a limit of 2000 requests per minute per
IP address, but mapped tasks run in parallel, possibly on several workers, each in its own process.
Two ways to keep the fleet under the limit:

- a shared limit: with ``rate_limit_redis_conn_id`` in the ``smspartner_default`` extras,
  ``requests_per_second`` (default 25/s = 1500/min) is one budget in Redis for every task and
  worker, so the ``smspartner_api`` Pool may have as many slots as the workers can run (e.g. 8);
- without it, each task throttles only itself: keep ``pool slots x requests_per_second x 60``
  under the API limit (1 slot x 25/s = 1500/min).

Create the pool first: ``airflow pools set smspartner_api 1 "SMS Partner API budget"``.

``split_input`` reads the numbers and returns chunks; each mapped
``SmsPartnerAddStopsOperator`` adds one chunk (skipping numbers already on the list) and writes
its outcomes to ``smspartner_add_results``. Connections: ``smspartner_default``, ``warehouse``.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import Param, dag, task

from airflow_provider_smspartner.operators.smspartner import SmsPartnerAddStopsOperator

SQL_CONN_ID = os.environ.get("SMSPARTNER_EXAMPLE_SQL_CONN_ID", "warehouse")
POOL = "smspartner_api"
CHUNK_SIZE = 50_000


@dag(
    dag_id="smspartner_bulk_add_mapped",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["smspartner", "example"],
    params={
        "chunk_size": Param(CHUNK_SIZE, type="integer", minimum=1, description="Numbers per mapped task")
    },
    doc_md=__doc__,
)
def smspartner_bulk_add_mapped():
    @task
    def split_input(params: dict | None = None) -> list[list[str]]:
        """Read the numbers to add and cut them into chunks, one per mapped task."""
        from airflow.sdk import BaseHook

        chunk_size = int((params or {}).get("chunk_size", CHUNK_SIZE))
        hook = BaseHook.get_connection(SQL_CONN_ID).get_hook()
        rows = hook.get_records("SELECT phone FROM crm_unsubscribes ORDER BY phone")
        numbers = [row[0] for row in rows]
        return [numbers[i : i + chunk_size] for i in range(0, len(numbers), chunk_size)]

    SmsPartnerAddStopsOperator.partial(
        task_id="add_chunk",
        pool=POOL,
        results_table="smspartner_add_results",
        results_conn_id=SQL_CONN_ID,
        max_workers=8,
    ).expand(phone_numbers=split_input())


smspartner_bulk_add_mapped()
