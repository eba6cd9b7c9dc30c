"""`make demo`: the whole job end to end, offline, on embedded defaults.

Starts the SMS Partner sandbox with a seeded stop list, creates a SQLite warehouse with messy
marketing contacts and a CRM unsubscribes table, runs the example DAGs through Airflow itself
(``dag.test()`` on a SQLite metadata DB), and prints what happened. Everything lives under
``.demo/`` in the repository; no server is left running.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / ".demo"
AIRFLOW_HOME = DEMO / "airflow"
WAREHOUSE = DEMO / "warehouse.db"
OUTPUT = DEMO / "output"
API_KEY = "demo-api-key-not-a-secret"

# People who replied STOP (already on the list), so the contact join has something to find.
ALREADY_STOPPED = ["+33612345678", "+33698765432", "+32470123456", "+33781223344"]
CONTACTS = [
    (1, "Alice Martin", "06 12 34 56 78"),  # on the list, national format with spaces
    (2, "Bruno Petit", "+33 (0)6 98 76 54 32"),  # on the list, trunk zero in brackets
    (3, "Chloé Durand", "0033781223344"),  # on the list, 00 international prefix
    (4, "Dirk Peeters", "+32 470 12 34 56"),  # on the list, Belgian
    (5, "Emma Bernard", "6.11.22.33.44"),  # not on the list, dots, no leading zero
    (6, "Farid Amrani", "+212 6 61 23 45 67"),  # Moroccan, not on the list
    (7, "Greta Vogel", "0049 1512 3456789"),  # German, not on the list
    (8, "Hugo Lambert", "33655443322"),  # country code without +
    (9, "Inès Moreau", "n/a"),  # junk
    (10, "Jules Roux", "07 81 22 33 44"),  # on the list (same as Chloé)
]
UNSUBSCRIBES = [
    "06 55 44 33 22",  # new
    "+33655443322",  # duplicate of the above in another format
    "0612345678",  # already on the list
    "+41 79 123 45 67",  # new, Swiss
    "07.66.55.44.33",  # new
    "not a phone",  # invalid
    "+44 7911 123456",  # new, UK
    "",  # empty
]


def prepare_environment() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    AIRFLOW_HOME.mkdir(parents=True)
    OUTPUT.mkdir()
    os.environ.update(
        AIRFLOW_HOME=str(AIRFLOW_HOME),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "example_dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        AIRFLOW__LOGGING__LOGGING_LEVEL=os.environ.get("DEMO_LOG_LEVEL", "WARNING"),
        SMSPARTNER_DEMO_DIR=str(OUTPUT),
        AIRFLOW_CONN_WAREHOUSE=json.dumps({"conn_type": "sqlite", "host": str(WAREHOUSE)}),
    )


def create_warehouse() -> None:
    with sqlite3.connect(WAREHOUSE) as db:
        db.execute(
            "CREATE TABLE marketing_contacts (contact_id INTEGER PRIMARY KEY, name TEXT, phone TEXT, "
            "sms_opt_out INTEGER NOT NULL DEFAULT 0)"
        )
        db.executemany("INSERT INTO marketing_contacts (contact_id, name, phone) VALUES (?, ?, ?)", CONTACTS)
        db.execute("CREATE TABLE crm_unsubscribes (phone TEXT)")
        db.executemany("INSERT INTO crm_unsubscribes (phone) VALUES (?)", [(p,) for p in UNSUBSCRIBES])


def run_dag(dagbag, dag_id: str, **conf) -> dict:
    started = time.monotonic()
    run = dagbag.get_dag(dag_id).test(run_conf=conf or None)
    if run.state != "success":
        raise SystemExit(f"DAG {dag_id} ended {run.state}; see the log above")
    print(f"  {dag_id}: {run.state} in {time.monotonic() - started:.1f} s", flush=True)
    return {
        ti.task_id: ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)
        for ti in run.get_task_instances()
    }


def main() -> None:
    # Noise from Airflow's own dependencies, not from the provider: keep the report readable.
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    prepare_environment()
    sys.path.insert(0, str(REPO))
    from airflow_provider_smspartner.sandbox import SandboxServer

    create_warehouse()
    print("SMS Partner provider demo (offline: local sandbox API + SQLite warehouse)\n", flush=True)
    with SandboxServer(api_key=API_KEY, seed_stops=1000, stops=ALREADY_STOPPED, seed=42) as sandbox:
        os.environ["AIRFLOW_CONN_SMSPARTNER_DEFAULT"] = json.dumps(
            {"conn_type": "smspartner", "host": sandbox.base_url, "password": API_KEY}
        )
        print(f"sandbox API at {sandbox.base_url} with {len(sandbox.state):,} stops", flush=True)

        from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook

        hook = SmsPartnerHook()
        ok, message = hook.test_connection()
        print(f"connection test: {'ok' if ok else 'FAILED'}: {message}")
        entries = hook.get_stop_list()
        print(f"stop list through the hook: {len(entries):,} numbers, e.g.")
        for entry in entries[-3:]:
            print(f"  #{entry.stop_id} {entry.phone_number} since {entry.created_at:%Y-%m-%d %H:%M} UTC")

        print("\nrunning the example DAGs with Airflow (dag.test, SQLite metadata DB):", flush=True)
        from airflow.dag_processing.dagbag import DagBag
        from airflow.models.pool import Pool
        from airflow.utils import db

        db.resetdb()
        Pool.create_or_update_pool(
            "smspartner_api", slots=1, description="SMS Partner API budget", include_deferred=False
        )
        dagbag = DagBag(str(REPO / "example_dags"))
        if dagbag.import_errors:
            raise SystemExit(f"example DAGs failed to import: {dagbag.import_errors}")
        run_dag(dagbag, "smspartner_stop_list_to_warehouse")
        sync = run_dag(dagbag, "smspartner_sync_unsubscribes")
        join = run_dag(dagbag, "smspartner_taskflow_join", output_dir=str(OUTPUT))
        mapped = run_dag(dagbag, "smspartner_bulk_add_mapped", chunk_size=3)
        gate = run_dag(dagbag, "smspartner_campaign_gate")
        events = run_dag(dagbag, "smspartner_stop_list_events")
        stops_after = len(sandbox.state)

    with sqlite3.connect(WAREHOUSE) as warehouse:
        landed = warehouse.execute("SELECT COUNT(*) FROM smspartner_stop_list").fetchone()[0]
        flagged = warehouse.execute(
            "SELECT name, phone FROM marketing_contacts WHERE sms_opt_out = 1 ORDER BY contact_id"
        ).fetchall()
        by_dag = "SELECT status, COUNT(*) FROM smspartner_add_results WHERE dag_id = ? GROUP BY status ORDER BY status"
        results = warehouse.execute(by_dag, ("smspartner_sync_unsubscribes",)).fetchall()
        mapped_results = warehouse.execute(by_dag, ("smspartner_bulk_add_mapped",)).fetchall()
    summary = sync["add_unsubscribes_to_stop_list"]
    print("\nreport")
    print(f"  stop-list rows landed in SQLite table smspartner_stop_list: {landed:,}")
    print(f"  marketing contacts flagged sms_opt_out: {len(flagged)} of {len(CONTACTS)}")
    for name, phone in flagged:
        print(f"    {name:<14} {phone}")
    print(f"  CRM unsubscribes pushed to the stop list: {summary['total']} inputs")
    counts = ", ".join(f"{k}={v}" for k, v in summary.items() if isinstance(v, int) and k != "total" and v)
    print(f"    outcomes: {counts}")
    print(f"    results table smspartner_add_results: {dict(results)}")
    print(f"    stop list now holds {stops_after:,} numbers")
    chunks = mapped["split_input"]
    print(
        f"  mapped bulk add, same unsubscribes again in {len(chunks)} mapped tasks sharing the smspartner_api "
        f"pool: {dict(mapped_results)} (re-runs add nothing twice)"
    )
    counts = gate["suppress_audience"]
    print(
        f"  campaign gate against the live list: audience {counts['audience']}, kept {counts['kept']}, "
        f"stopped {counts['stopped']}, invalid {counts['invalid']}, duplicate {counts['duplicate']} "
        "(safe audience in campaign_audience_safe, audit row in smspartner_suppression_audit)"
    )
    refreshed = events["refresh_suppressed_audience"]
    print(
        f"  event-driven refresh (the run a stale-copy event starts): stop list upserted, suppressed "
        f"audience rewritten: kept {refreshed['kept']} of {refreshed['audience']} "
        "(marketing_audience_suppressed)"
    )
    join_summary = join["write_safe_contacts"]
    print(
        f"  TaskFlow join: {join_summary['safe_to_text']} of {join_summary['contacts']} sample contacts safe to text"
    )
    print("\nfiles")
    print(f"  warehouse (SQLite): {WAREHOUSE}")
    print(f"  contacts safe to text (CSV): {join_summary['safe_path']}")
    print(f"  Airflow home (metadata DB, logs): {AIRFLOW_HOME}")
    print("sandbox stopped; nothing left running.")


if __name__ == "__main__":
    main()
