"""OpenLineage events of the example DAGs, as Airflow's OpenLineage provider emits them.

Each DAG runs under ``dag.test()`` in a fresh interpreter configured with the provider's file
transport (``[openlineage] transport = {"type": "file", ...}``): the provider reads its
configuration once per process and registers its listener when its plugin loads, which in this
session may already have happened with OpenLineage off. The listener emits a task's events from
a forked process the task waits for (``[openlineage] execution_timeout``, raised here), and the
child interpreter has exited before the file is read, so every event is on disk by then.

To check another task, add a row to ``TASK_LINEAGE``: (DAG id, task id, expected input dataset
names, expected output dataset names).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import PROJECT_ROOT, require_module

require_module("airflow.providers.openlineage", "install the [openlineage] extra")

#: Runs one example DAG with ``dag.test()``; argv: DAG folder, DAG id.
_RUN_DAG = """
import sys
from airflow.dag_processing.dagbag import DagBag

dag = DagBag(sys.argv[1]).get_dag(sys.argv[2])
print("DAG_RUN_STATE=" + str(dag.test().state))
"""

STOP_LIST = "stop-list"

TASK_LINEAGE = [
    pytest.param(
        "smspartner_stop_list_to_warehouse",
        "extract_stop_list",
        {STOP_LIST},
        {"main.smspartner_stop_list", "main.smspartner_stop_list_runs"},
        id="extract_stop_list",
    ),
    pytest.param(
        "smspartner_stop_list_to_warehouse",
        "normalize_contacts",
        {"main.marketing_contacts"},
        {"main.marketing_contacts_e164"},
        id="normalize_contacts",
    ),
    pytest.param(
        "smspartner_campaign_gate",
        "suppress_audience",
        {STOP_LIST, "main.marketing_contacts"},
        {
            "main.campaign_audience_safe",
            "main.campaign_audience_excluded",
            "main.smspartner_suppression_audit",
        },
        id="suppress_audience",
    ),
    pytest.param(
        "smspartner_sync_unsubscribes",
        "add_unsubscribes_to_stop_list",
        {"main.crm_unsubscribes"},
        {STOP_LIST, "main.smspartner_add_results"},
        id="add_unsubscribes_to_stop_list",
    ),
    pytest.param(
        "smspartner_taskflow_join",
        "fetch_stop_list",
        {STOP_LIST},
        set(),  # a DataFrame through XCom is no dataset
        id="fetch_stop_list",
    ),
    pytest.param(
        "smspartner_bulk_add_mapped",
        "add_chunk",
        set(),  # numbers from an upstream task's XCom are no dataset
        {STOP_LIST, "main.smspartner_add_results"},
        id="add_chunk",
    ),
]


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


def sandbox_namespace(sandbox) -> str:
    return f"smspartner://{urlsplit(sandbox.url).netloc}"


@pytest.mark.usefixtures("airflow_db", "smspartner_pool")
@pytest.mark.parametrize(("dag_id", "task_id", "inputs", "outputs"), TASK_LINEAGE)
def test_task_reports_its_datasets(dag_id, task_id, inputs, outputs, warehouse, sandbox, tmp_path):
    events = run_with_lineage(dag_id, tmp_path)
    for event in complete_events(events, dag_id, task_id):
        assert {d["name"] for d in event["inputs"]} == inputs
        assert {d["name"] for d in event["outputs"]} == outputs
        for dataset in event["inputs"] + event["outputs"]:
            if dataset["name"] == STOP_LIST:
                assert dataset["namespace"] == sandbox_namespace(sandbox)
            else:
                assert dataset["namespace"] in ("file", f"sqlite://{warehouse.resolve()}")


@pytest.mark.usefixtures("airflow_db", "smspartner_pool")
def test_extract_reports_the_stop_list_and_the_table_with_counts(warehouse, sandbox, tmp_path):
    from airflow_provider_smspartner.utils.provider_tables import stop_list_table_spec

    events = run_with_lineage("smspartner_stop_list_to_warehouse", tmp_path)
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
    assert [f["name"] for f in table["facets"]["schema"]["fields"]] == stop_list_table_spec().names
    assert outputs["main.smspartner_stop_list_runs"]["outputFacets"]["outputStatistics"]["rowCount"] == 1
    # The run's own START event exists too; the counts are known only on completion.
    assert any(e["eventType"] == "START" and e["job"]["name"].endswith(".extract_stop_list") for e in events)


class TestStopListToSqlMethod:
    """``get_openlineage_facets_on_complete`` called as Airflow would, after (or without) execute."""

    def test_after_execute(self, smspartner_conn, sqlite_conn, sandbox, unique_table, tmp_path):
        from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator

        operator = SmsPartnerStopListToSqlOperator(
            task_id="extract", sql_conn_id=sqlite_conn, table=unique_table
        )
        operator.execute({})
        lineage = operator.get_openlineage_facets_on_complete(None)

        (stop_list,) = lineage.inputs
        assert stop_list.name == STOP_LIST
        assert stop_list.namespace == sandbox_namespace(sandbox)
        assert stop_list.inputFacets["inputStatistics"].rowCount == len(sandbox.state)
        table, run_log = lineage.outputs
        assert table.name == f"main.{unique_table}"
        assert table.namespace == f"sqlite://{(tmp_path / 'warehouse.db').resolve()}"
        assert table.outputFacets["outputStatistics"].rowCount == len(sandbox.state)
        assert run_log.name == f"main.{unique_table}_runs"
        assert run_log.outputFacets["outputStatistics"].rowCount == 1

    def test_without_run_log_or_counts(self, smspartner_conn, sqlite_conn, unique_table):
        from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator

        operator = SmsPartnerStopListToSqlOperator(
            task_id="extract", sql_conn_id=sqlite_conn, table=unique_table, run_log_table=None
        )
        # As after a run that failed before the list came: no counts, and no run log row.
        lineage = operator.get_openlineage_facets_on_complete(None)
        assert [d.name for d in lineage.inputs] == [STOP_LIST]
        assert [d.name for d in lineage.outputs] == [f"main.{unique_table}"]
        assert lineage.inputs[0].inputFacets == {}
        assert lineage.outputs[0].outputFacets == {}
        assert "schema" in lineage.outputs[0].facets
