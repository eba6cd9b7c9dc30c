"""Flag contacts that opted out, entirely in TaskFlow: no warehouse needed.

``fetch_stop_list`` returns the SMS Partner stop list as a DataFrame (XCom, via pyarrow);
``load_contacts`` reads a contacts CSV (or a built-in sample typed the way people type numbers);
``write_safe_contacts`` normalises every contact number to E.164 with ``flag_stopped``, joins it to
the stop list and writes the contacts that are safe to text to a CSV. Only counts and the path go
to XCom, not the contact data.

``fetch_stop_list`` runs in the ``smspartner_api`` Pool shared by every task that calls SMS Partner.

Params: ``contacts_path`` (CSV with a ``phone`` column; empty = the sample), ``output_dir``.
Connection: ``smspartner_default`` (the sandbox works: see the README).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from airflow.sdk import Param, dag, task

from airflow_provider_smspartner.operators.smspartner import SmsPartnerStopListOperator

if TYPE_CHECKING:
    import pandas as pd

SAMPLE_CONTACTS = [
    {"contact_id": 1, "name": "Alice", "phone": "06 12 34 56 78"},
    {"contact_id": 2, "name": "Bruno", "phone": "+33 (0)6 98 76 54 32"},
    {"contact_id": 3, "name": "Chloé", "phone": "0033 7 81 22 33 44"},
    {"contact_id": 4, "name": "Dieter", "phone": "+49 151 23456789"},
    {"contact_id": 5, "name": "Emma", "phone": "not given"},
]


@dag(
    dag_id="smspartner_taskflow_join",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["smspartner", "example"],
    params={
        "contacts_path": Param("", type="string", description="CSV with a 'phone' column; empty = sample"),
        "output_dir": Param(
            os.environ.get("SMSPARTNER_DEMO_DIR", "/tmp/smspartner_demo"),
            type="string",
            description="Output folder",
        ),
    },
    doc_md=__doc__,
)
def smspartner_taskflow_join():
    stop_list = SmsPartnerStopListOperator(task_id="fetch_stop_list", pool="smspartner_api")

    @task
    def load_contacts(params: dict | None = None) -> pd.DataFrame:
        # pandas (and phonenumbers below) load when the task runs, not at every DAG parse.
        import pandas as pd

        path = (params or {}).get("contacts_path")
        return pd.read_csv(path, dtype={"phone": "str"}) if path else pd.DataFrame(SAMPLE_CONTACTS)

    @task
    def write_safe_contacts(
        stop_list: pd.DataFrame, contacts: pd.DataFrame, params: dict | None = None
    ) -> dict:
        from airflow_provider_smspartner.phone_numbers import flag_stopped

        flagged = flag_stopped(contacts, stop_list, phone_column="phone")
        output_dir = Path((params or {})["output_dir"])
        output_dir.mkdir(parents=True, exist_ok=True)
        safe_path = output_dir / "contacts_safe_to_text.csv"
        # Contacts without a valid number are not "safe": they cannot be checked against the list.
        safe = flagged[~flagged["is_stopped"] & flagged["phone_e164"].notna()]
        safe.to_csv(safe_path, index=False)
        return {
            "contacts": len(flagged),
            "stopped": int(flagged["is_stopped"].sum()),
            "invalid_numbers": int(flagged["phone_e164"].isna().sum()),
            "safe_to_text": len(safe),
            "safe_path": str(safe_path),
        }

    write_safe_contacts(stop_list.output, load_contacts())


smspartner_taskflow_join()
