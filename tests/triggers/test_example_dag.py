"""The event-driven example DAG (``smspartner_stop_list_events``) under ``dag.test()``, with the
trigger its Asset watcher declares polling the sandbox and the SQLite warehouse in between.

The triggerer is not involved (``dag.test()`` runs no watcher): the test drives the watcher's own
trigger object on a fake clock, and starts the runs an event would start.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.helpers import drive_trigger, live_sha256

DAG_ID = "smspartner_stop_list_events"


def _query(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


@pytest.mark.usefixtures("airflow_db", "smspartner_pool")
class TestStopListEventsDag:
    def test_parses_with_its_watcher(self, example_dagbag):
        from airflow_provider_smspartner.triggers.smspartner import SmsPartnerStopListTrigger

        assert example_dagbag.import_errors == {}
        dag = example_dagbag.get_dag(DAG_ID)
        (asset,) = dag.timetable.asset_condition.objects
        (watcher,) = asset.watchers
        assert asset.name == "smspartner_live_stop_list"
        assert isinstance(watcher.trigger, SmsPartnerStopListTrigger)
        assert watcher.trigger.serialize()[1] == {
            "smspartner_conn_id": "smspartner_default",
            "poll_interval": 300.0,
            "sql_conn_id": "warehouse",
            "table": "smspartner_stop_list",
            "run_log_table": None,
        }

    def test_the_run_an_event_starts_makes_the_trigger_quiet(self, example_dagbag, warehouse, sandbox):
        """The watcher's trigger fires while the warehouse copy is stale; the run an event starts
        makes it fresh (the trigger falls quiet) and refreshes the suppressed audience."""
        dag = example_dagbag.get_dag(DAG_ID)
        (asset,) = dag.timetable.asset_condition.objects
        trigger = asset.watchers[0].trigger
        (event,) = drive_trigger(trigger, 2)
        assert event["warehouse_list_sha256"] is None  # no extract yet
        assert event["list_sha256"] == live_sha256(sandbox)

        assert dag.test().state == "success"
        assert _query(warehouse, "SELECT COUNT(*) FROM smspartner_stop_list")[0][0] == len(sandbox.state)
        assert _query(warehouse, "SELECT status, list_sha256 FROM smspartner_stop_list_runs") == [
            ("applied", live_sha256(sandbox))
        ]
        assert _query(warehouse, "SELECT contact_id FROM marketing_audience_suppressed") == [(3,)]
        excluded = dict(_query(warehouse, "SELECT contact_id, reason FROM marketing_audience_excluded"))
        assert excluded == {1: "stopped", 2: "stopped", 4: "invalid"}
        assert drive_trigger(trigger, 3) == []

        sandbox.state.seed_numbers(["+33611111111"])  # contact 3 replies STOP
        (event,) = drive_trigger(trigger, 3)
        assert event["list_sha256"] == live_sha256(sandbox) != event["warehouse_list_sha256"]
        assert dag.test().state == "success"
        assert _query(warehouse, "SELECT COUNT(*) FROM marketing_audience_suppressed") == [(0,)]
        assert drive_trigger(trigger, 3) == []
