"""OpenLineage events of the example DAGs, as Airflow's OpenLineage provider emits them in a run.

Each DAG runs once under ``dag.test()`` in a fresh interpreter configured with the provider's file
transport (``[openlineage] transport = {"type": "file", ...}``): the provider reads its
configuration once per process and registers its listener when its plugin loads, which in this
session may already have happened with OpenLineage off. The listener emits a task's events from
a forked process the task waits for (``[openlineage] execution_timeout``, raised here), and the
child interpreter has exited before the file is read, so every event is on disk by then.

The dataset builders and the operators' ``get_openlineage_facets_on_complete`` have unit tests
(``tests/utils/test_lineage.py``, ``tests/test_lineage.py``); these runs check that Airflow calls
them in a real run and that every task of the examples names what it reads and writes. To check
another task, add it under its DAG in ``DAG_LINEAGE``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, require_module

require_module("airflow.providers.openlineage", "install the [openlineage] extra")

from tests.test_lineage import STOP_LIST, sandbox_namespace  # noqa: E402 (after the module check)

#: Runs one example DAG with ``dag.test()``; argv: DAG folder, DAG id.
_RUN_DAG = """
import sys
from airflow.dag_processing.dagbag import DagBag

dag = DagBag(sys.argv[1]).get_dag(sys.argv[2])
print("DAG_RUN_STATE=" + str(dag.test().state))
"""

#: Per example DAG, the tasks checked: task id -> (input dataset names, output dataset names).
DAG_LINEAGE: dict[str, dict[str, tuple[set[str], set[str]]]] = {
    "smspartner_stop_list_to_warehouse": {
        "extract_stop_list": (
            {STOP_LIST},
            {"main.smspartner_stop_list", "main.smspartner_stop_list_runs"},
        ),
        "normalize_contacts": ({"main.marketing_contacts"}, {"main.marketing_contacts_e164"}),
    },
    "smspartner_campaign_gate": {
        "suppress_audience": (
            {STOP_LIST, "main.marketing_contacts"},
            {
                "main.campaign_audience_safe",
                "main.campaign_audience_excluded",
                "main.smspartner_suppression_audit",
            },
        ),
    },
    "smspartner_sync_unsubscribes": {
        "add_unsubscribes_to_stop_list": (
            {"main.crm_unsubscribes"},
            {STOP_LIST, "main.smspartner_add_results"},
        ),
    },
    "smspartner_taskflow_join": {
        "fetch_stop_list": ({STOP_LIST}, set()),  # a DataFrame through XCom is no dataset
    },
    "smspartner_bulk_add_mapped": {
        # Numbers from an upstream task's XCom are no dataset.
        "add_chunk": (set(), {STOP_LIST, "main.smspartner_add_results"}),
    },
}


def run_with_lineage(dag_id: str, tmp_path: Path) -> list[dict]:
    """Run ``dag_id`` under ``dag.test()`` with OpenLineage's file transport; return its events."""
    events = tmp_path / "openlineage.jsonl"
    env = {
        **os.environ,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "120",
        "AIRFLOW__OPENLINEAGE__DISABLED": "False",
        "SMSPARTNER_DEMO_DIR": str(tmp_path / "demo"),
    }
    result = subprocess.run(
        [sys.executable, "-c", _RUN_DAG, str(PROJECT_ROOT / "example_dags"), dag_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "DAG_RUN_STATE=success" in result.stdout, (result.stdout + result.stderr)[-4000:]
    assert events.exists(), "no OpenLineage event was written"
    return [json.loads(line) for line in events.read_text().splitlines() if line.strip()]


def complete_events(events: list[dict], dag_id: str, task_id: str) -> list[dict]:
    """The COMPLETE events of a task (one per mapped instance)."""
    job = f"{dag_id}.{task_id}"
    found = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == job]
    assert found, f"no COMPLETE event for {job}: {sorted({e['job']['name'] for e in events})}"
    return found


@pytest.mark.usefixtures("airflow_db", "smspartner_pool")
@pytest.mark.parametrize("dag_id", list(DAG_LINEAGE))
def test_every_task_reports_its_datasets(dag_id, warehouse, sandbox, tmp_path):
    events = run_with_lineage(dag_id, tmp_path)
    for task_id, (inputs, outputs) in DAG_LINEAGE[dag_id].items():
        for event in complete_events(events, dag_id, task_id):
            assert {d["name"] for d in event["inputs"]} == inputs, task_id
            assert {d["name"] for d in event["outputs"]} == outputs, task_id
            for dataset in event["inputs"] + event["outputs"]:
                if dataset["name"] == STOP_LIST:
                    assert dataset["namespace"] == sandbox_namespace(sandbox)
                else:
                    assert dataset["namespace"] in ("file", f"sqlite://{warehouse.resolve()}")
    if dag_id == "smspartner_stop_list_to_warehouse":
        _check_the_extracts_counts(events, warehouse, sandbox)


def _check_the_extracts_counts(events: list[dict], warehouse: Path, sandbox) -> None:
    """The extract reports the stop list and the table with their row counts and schemas."""
    (event,) = complete_events(events, "smspartner_stop_list_to_warehouse", "extract_stop_list")
    stops = len(sandbox.state)

    (stop_list,) = event["inputs"]
    assert (stop_list["namespace"], stop_list["name"]) == (sandbox_namespace(sandbox), STOP_LIST)
    assert stop_list["namespace"].startswith("smspartner://127.0.0.1:")
    assert stop_list["inputFacets"]["inputStatistics"]["rowCount"] == stops
    assert [f["name"] for f in stop_list["facets"]["schema"]["fields"]] == ["id", "phoneNumber", "createdAt"]

    outputs = {d["name"]: d for d in event["outputs"]}
    table = outputs["main.smspartner_stop_list"]
    assert table["namespace"] == f"sqlite://{warehouse.resolve()}"
    assert table["outputFacets"]["outputStatistics"]["rowCount"] == stops
    with sqlite3.connect(warehouse) as db:
        written = [row[1] for row in db.execute("PRAGMA table_info(smspartner_stop_list)")]
    assert [f["name"] for f in table["facets"]["schema"]["fields"]] == written
    assert outputs["main.smspartner_stop_list_runs"]["outputFacets"]["outputStatistics"]["rowCount"] == 1
    # The run's own START event exists too; the counts are known only on completion.
    assert any(e["eventType"] == "START" and e["job"]["name"].endswith(".extract_stop_list") for e in events)
