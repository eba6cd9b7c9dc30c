"""The example DAGs import cleanly and run green under ``dag.test()`` against the sandbox and SQLite."""

from __future__ import annotations

import importlib.util
import sqlite3
import warnings
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT, STOPPED
from tests.helpers import live_sha256

EXAMPLE_DAG_FILES = sorted((PROJECT_ROOT / "example_dags").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLE_DAG_FILES, ids=lambda p: p.stem)
def test_imports_without_errors_or_deprecation_warnings(path: Path):
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec.loader.exec_module(module)
    deprecations = [
        str(w.message)
        for w in caught
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))
    ]
    assert deprecations == []
    assert module.__doc__, "each example DAG is documented at the top"


def test_dagbag_has_every_example(example_dagbag):
    assert example_dagbag.import_errors == {}
    assert {
        "smspartner_stop_list_to_warehouse",
        "smspartner_sync_unsubscribes",
        "crm_unsubscribes_export",
        "smspartner_taskflow_join",
        "smspartner_bulk_add_mapped",
        "smspartner_stop_list_changes",
        "smspartner_campaign_gate",
    } <= set(example_dagbag.dag_ids)


def _query(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


@pytest.mark.usefixtures("airflow_db", "smspartner_pool")
class TestExampleDagRuns:
    def test_stop_list_to_warehouse(self, example_dagbag, warehouse, sandbox):
        run = example_dagbag.get_dag("smspartner_stop_list_to_warehouse").test()
        assert run.state == "success"
        assert _query(warehouse, "SELECT COUNT(*) FROM smspartner_stop_list")[0][0] == len(sandbox.state)
        flagged = _query(
            warehouse, "SELECT contact_id FROM marketing_contacts WHERE sms_opt_out = 1 ORDER BY 1"
        )
        assert flagged == [(1,), (2,)]
        e164 = _query(
            warehouse, "SELECT contact_id, phone_e164, reason FROM marketing_contacts_e164 ORDER BY 1"
        )
        assert e164 == [
            (1, "+33612345678", None),
            (2, "+33698765432", None),
            (3, "+33611111111", None),
            (4, None, "not_a_number"),
        ]

    def test_campaign_gate_checks_the_live_list(self, example_dagbag, warehouse, sandbox):
        gate = example_dagbag.get_dag("smspartner_campaign_gate")
        listed = len(sandbox.state)
        assert gate.test().state == "success"
        assert _query(warehouse, "SELECT contact_id, phone_e164 FROM campaign_audience_safe") == [
            (3, "+33611111111")
        ]
        excluded = dict(_query(warehouse, "SELECT contact_id, reason FROM campaign_audience_excluded"))
        assert excluded == {1: "stopped", 2: "stopped", 4: "invalid"}

        # A STOP that arrived after any warehouse extract is caught: the gate reads the live list.
        sandbox.state.seed_numbers(["+33611111111"])
        assert gate.test().state == "success"
        assert _query(warehouse, "SELECT COUNT(*) FROM campaign_audience_safe") == [(0,)]
        audit = _query(
            warehouse,
            "SELECT mode, audience, kept, stopped, invalid, duplicate, rows_in_list, output "
            "FROM smspartner_suppression_audit ORDER BY checked_at",
        )
        assert audit == [
            ("filter", 4, 1, 2, 1, 0, listed, "campaign_audience_safe"),
            ("filter", 4, 0, 3, 1, 0, listed + 1, "campaign_audience_safe"),
        ]

    def test_stop_list_changes_read_the_asset_extras(self, example_dagbag, warehouse, sandbox):
        """The extract's Asset event carries the change; the downstream DAG acts only on a change."""
        from airflow.models.asset import AssetEvent, AssetModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        def latest_extra() -> dict:
            with create_session() as session:
                query = (
                    select(AssetEvent.extra)
                    .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                    .where(AssetModel.name == "smspartner_stop_list")
                    .order_by(AssetEvent.id.desc())
                    .limit(1)
                )
                return session.scalars(query).one()

        extract = example_dagbag.get_dag("smspartner_stop_list_to_warehouse")
        changes = example_dagbag.get_dag("smspartner_stop_list_changes")
        entries = sandbox.state.list_entries()
        fingerprint = live_sha256(sandbox)

        assert extract.test().state == "success"
        assert latest_extra() == {
            "rows_in_list": len(entries),
            "inserted": len(entries),
            "updated": 0,
            "removed": 0,
            "list_sha256": fingerprint,
        }
        run = changes.test()
        assert run.state == "success"
        assert run.get_task_instance("record_changes").state == "success"
        report = "SELECT inserted, updated, removed, list_sha256 FROM smspartner_stop_list_changes"
        assert _query(warehouse, report) == [(len(entries), 0, 0, fingerprint)]

        assert extract.test().state == "success"  # the same list again: nothing changes
        assert latest_extra() == {
            "rows_in_list": len(entries),
            "inserted": 0,
            "updated": 0,
            "removed": 0,
            "list_sha256": fingerprint,
        }
        run = changes.test()
        assert run.state == "success"
        assert run.get_task_instance("record_changes").state == "skipped"
        assert len(_query(warehouse, report)) == 1

    def test_stop_list_changes_take_the_newest_event_by_timestamp(self, example_dagbag):
        """Airflow hands the triggering events over in no fixed order (PostgreSQL): the list hash
        reported is the newest event's by timestamp, whatever its place; the counts are summed."""
        from datetime import datetime, timezone
        from types import SimpleNamespace

        from airflow.sdk import Asset

        def event(minute: int, sha: str, inserted: int) -> SimpleNamespace:
            stamp = datetime(2026, 3, 1, 12, minute, tzinfo=timezone.utc)
            return SimpleNamespace(timestamp=stamp, extra={"list_sha256": sha, "inserted": inserted})

        events = [event(5, "middle", 1), event(9, "newest", 2), event(1, "oldest", 4)]
        task = example_dagbag.get_dag("smspartner_stop_list_changes").get_task("stop_list_changes")
        for order in (events, events[::-1], events[1:] + events[:1]):
            changes = task.python_callable(triggering_asset_events={Asset("smspartner_stop_list"): order})
            assert changes == {
                "inserted": 7,
                "updated": 0,
                "removed": 0,
                "events": 3,
                "list_sha256": "newest",
            }

    def test_sync_unsubscribes(self, example_dagbag, warehouse, sandbox):
        before = len(sandbox.state)
        run = example_dagbag.get_dag("smspartner_sync_unsubscribes").test()
        assert run.state == "success"
        statuses = dict(
            _query(warehouse, "SELECT status, COUNT(*) FROM smspartner_add_results GROUP BY status")
        )
        assert statuses == {"added": 2, "duplicate": 1, "skipped_existing": 1, "invalid": 1}
        assert len(sandbox.state) == before + 2
        assert {"+33655443322", "+41791234567"} <= sandbox.state.phone_numbers()

    def test_taskflow_join(self, example_dagbag, warehouse, tmp_path):
        run = example_dagbag.get_dag("smspartner_taskflow_join").test(run_conf={"output_dir": str(tmp_path)})
        assert run.state == "success"
        safe = pd.read_csv(tmp_path / "contacts_safe_to_text.csv", dtype={"phone": "str"})
        assert not set(safe["phone_e164"]) & set(STOPPED)

    def test_bulk_add_mapped(self, example_dagbag, warehouse, sandbox):
        run = example_dagbag.get_dag("smspartner_bulk_add_mapped").test(run_conf={"chunk_size": 2})
        assert run.state == "success"
        mapped = [ti for ti in run.get_task_instances() if ti.task_id == "add_chunk"]
        assert len(mapped) == 3  # 5 inputs in chunks of 2
        assert {"+33655443322", "+41791234567"} <= sandbox.state.phone_numbers()
        # Each chunk de-duplicates on its own, so the cross-chunk duplicate shows as already on the list.
        rows = _query(warehouse, "SELECT status FROM smspartner_add_results")
        assert len(rows) == 5


@pytest.mark.usefixtures("airflow_db", "smspartner_pool")
def test_api_key_absent_from_xcom_rendered_fields_and_logs(example_dagbag, warehouse, capfd):
    """Run a DAG that calls the API from several tasks; the key is nowhere Airflow stores or prints."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields

    from tests.conftest import TEST_API_KEY

    run = example_dagbag.get_dag("smspartner_sync_unsubscribes").test()
    assert run.state == "success"
    stored = []
    for ti in run.get_task_instances():
        stored.append(repr(ti.xcom_pull(task_ids=ti.task_id)))
        stored.append(repr(RenderedTaskInstanceFields.get_templated_fields(ti)))
    captured = capfd.readouterr()
    assert "add_unsubscribes_to_stop_list" in captured.out + captured.err  # the task log was captured
    assert [text for text in [*stored, captured.out, captured.err] if TEST_API_KEY in text] == []
