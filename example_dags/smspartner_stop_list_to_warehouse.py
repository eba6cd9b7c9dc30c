"""Daily: land the SMS Partner stop list in the warehouse and flag opted-out marketing contacts.

1. ``extract_stop_list`` upserts the stop list into ``smspartner_stop_list`` (numbers that leave
   the list keep their row with ``removed_at`` set: the opt-out history compliance asks for) and
   publishes the ``smspartner_stop_list`` Asset for downstream DAGs.
2. ``normalize_contacts`` (``PhoneNumbersToSqlOperator``) writes every marketing contact's number
   in E.164 to ``marketing_contacts_e164`` (``contact_id``, ``phone_e164``, ``reason``), reading
   and writing in chunks, so it scales to tens of millions of contacts (contacts are typed in
   every format; the stop list is E.164).
3. ``flag_opt_outs`` sets ``marketing_contacts.sms_opt_out`` with one SQL join in the warehouse.

The task that calls SMS Partner runs in the ``smspartner_api`` Pool, which every example shares:
its slots bound how many tasks call the API at once (``airflow pools set smspartner_api 1 "SMS
Partner API"``, as in the other examples; more slots once the connection shares its rate limit
through Redis: see docs/scale-out.md).

Connections: ``smspartner_default`` and ``warehouse`` (any SQL database; SQLite in the demo).
The warehouse needs a ``marketing_contacts`` table with ``contact_id``, ``phone`` and an integer
``sms_opt_out`` column. Override the ids with ``SMSPARTNER_EXAMPLE_SQL_CONN_ID``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import Asset, dag

from airflow_provider_smspartner.transfers.phone_numbers_to_sql import PhoneNumbersToSqlOperator
from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator

SQL_CONN_ID = os.environ.get("SMSPARTNER_EXAMPLE_SQL_CONN_ID", "warehouse")
STOP_LIST_ASSET = Asset("smspartner_stop_list")
POOL = "smspartner_api"

FLAG_OPT_OUTS = """
UPDATE marketing_contacts
SET sms_opt_out = CASE WHEN EXISTS (
    SELECT 1
    FROM marketing_contacts_e164 c
    JOIN smspartner_stop_list s ON s.phone_e164 = c.phone_e164
    WHERE c.contact_id = marketing_contacts.contact_id AND s.removed_at IS NULL
) THEN 1 ELSE 0 END
"""


@dag(
    dag_id="smspartner_stop_list_to_warehouse",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["smspartner", "example"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    doc_md=__doc__,
)
def smspartner_stop_list_to_warehouse():
    extract = SmsPartnerStopListToSqlOperator(
        task_id="extract_stop_list",
        sql_conn_id=SQL_CONN_ID,
        table="smspartner_stop_list",
        mode="upsert",
        outlets=[STOP_LIST_ASSET],
        pool=POOL,
    )

    normalize_contacts = PhoneNumbersToSqlOperator(
        task_id="normalize_contacts",
        sql="SELECT contact_id, phone FROM marketing_contacts",
        source_conn_id=SQL_CONN_ID,
        key_column="contact_id",
        phone_column="phone",
        destination_table="marketing_contacts_e164",
        mode="replace",
        default_region="FR",
    )

    flag = SQLExecuteQueryOperator(task_id="flag_opt_outs", conn_id=SQL_CONN_ID, sql=FLAG_OPT_OUTS)

    [extract, normalize_contacts] >> flag


smspartner_stop_list_to_warehouse()
