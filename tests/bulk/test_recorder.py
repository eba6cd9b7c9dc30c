"""Tests of bulk.recorder: the results table is written while the run goes, ahead of every call."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_smspartner.bulk.pipeline import BulkOptions, add_stops
from airflow_provider_smspartner.bulk.recorder import ResultsWriteError, RunRecorder
from airflow_provider_smspartner.bulk.results import ResultsTable, TaskIdentity, TryResults
from airflow_provider_smspartner.hooks.smspartner import AddStopResult, SmsPartnerHook
from airflow_provider_smspartner.operators.smspartner import SmsPartnerAddStopsOperator
from tests.helpers import listed_once, new_numbers, read_results, status_counts, ti_context, use_sandbox

IDENTITY = TaskIdentity("bulk_dag", "manual__2026-01-01", "add_stops", -1, 1)


class RowCheckingHook:
    """A hook whose every add first reads the results table: the number's row must be there."""

    def __init__(self, results: TryResults) -> None:
        self.engine = results.engine
        self.table = results.name.name
        self.seen: dict[str, str | None] = {}
        self.lock = threading.Lock()

    def get_stop_list_df(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"stop_id": pd.Series([], dtype="int64"), "phone_e164": pd.Series([], dtype=object)}
        )

    def add_stop(self, phone: str) -> AddStopResult:
        query = sa.text(f"SELECT status FROM {self.table} WHERE phone_e164 = :phone AND try_number = 1")
        with self.engine.connect() as conn:
            status = conn.execute(query, {"phone": phone}).scalar()
        with self.lock:
            self.seen[phone] = status
            stop_id = len(self.seen)
        return AddStopResult("added", stop_id, phone)


class TestWriteAhead:
    def test_every_input_is_pending_before_its_call(self, results_db):
        conn_id, table = results_db
        results = ResultsTable(conn_id, table, block_rows=7).prepare(IDENTITY)
        hook = RowCheckingHook(results)
        numbers = [f"+3361234{i:04d}" for i in range(40)]
        result = add_stops(pd.Series([*numbers, "junk"]), hook, BulkOptions(max_workers=4), results=results)  # type: ignore[arg-type]
        assert set(hook.seen) == set(numbers)
        assert set(hook.seen.values()) == {"pending"}
        assert result.rows_written == 41
        rows = read_results(conn_id, table)
        assert status_counts(rows) == {"added": 40, "invalid": 1}
        results.close()


class TestWrittenAsItGoes:
    def test_outcomes_reach_the_table_during_the_run(self, sandbox, monkeypatch, results_db):
        conn_id, table = results_db
        sandbox.latency = 0.02
        use_sandbox(monkeypatch, sandbox, requests_per_second=100)
        numbers = new_numbers(250, sandbox)
        results = ResultsTable(conn_id, table, flush_seconds=0.3, flush_rows=10_000).prepare(IDENTITY)
        seen: list[dict[str, int]] = []
        running = threading.Event()
        running.set()

        def watch() -> None:
            while running.is_set():
                seen.append(status_counts(read_results(conn_id, table)))
                time.sleep(0.15)

        watcher = threading.Thread(target=watch)
        watcher.start()
        hook = SmsPartnerHook()
        try:
            add_stops(pd.Series(numbers), hook, BulkOptions(max_workers=4), results=results)
        finally:
            running.clear()
            watcher.join()
            hook.close()
            results.close()
        during = [counts for counts in seen if 0 < counts.get("added", 0) < len(numbers)]
        assert len(during) >= 3, seen  # several batches, every ~0.3 s, while the run went
        assert all(sum(counts.values()) <= len(numbers) for counts in seen)
        assert status_counts(read_results(conn_id, table)) == {"added": len(numbers)}


class TestFailedWrite:
    def test_stops_sending_and_the_next_try_recovers(self, api, sqlite_conn, monkeypatch):
        """A database that fails mid-run: no further call, the task fails, its retry completes."""
        numbers = new_numbers(400, api)
        use_sandbox(monkeypatch, api, requests_per_second=300)
        replace = TryResults.replace
        writes = {"count": 0}

        def failing_replace(self: TryResults, rows: Any) -> None:
            writes["count"] += 1
            if writes["count"] > 3:  # after the settled rows, the pending rows and one batch
                raise sa.exc.OperationalError("UPDATE ...", {}, Exception("disk I/O error"))
            replace(self, rows)

        monkeypatch.setattr(TryResults, "replace", failing_replace)
        op = SmsPartnerAddStopsOperator(
            task_id="add_stops", phone_numbers=numbers, results_table="adds", results_conn_id=sqlite_conn
        )
        init = RunRecorder.__init__

        def small_batches(self: RunRecorder, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            self.flush_rows = 25

        monkeypatch.setattr(RunRecorder, "__init__", small_batches)
        with pytest.raises(ResultsWriteError, match="disk I/O error"):
            op.execute(ti_context(1))
        sent = api.stats.count("stop-sms/add")
        assert 0 < sent < len(numbers), "the run went on sending after the failed write"
        monkeypatch.setattr(TryResults, "replace", replace)
        summary = op.execute(ti_context(2))
        assert summary["added"] + summary["skipped_existing"] == len(numbers)
        rows = read_results(sqlite_conn, "adds")
        assert (rows["status"] == "added").sum() == api.stats.adds_applied == len(numbers)
        assert "pending" not in set(rows["status"])
        assert listed_once(api, numbers)


class AppliedHook:
    """Adds applied in memory after a short random delay; remembers what it applied."""

    def __init__(self, seed: int) -> None:
        self.applied: set[str] = set()
        self.lock = threading.Lock()
        self.random = random.Random(seed)

    def get_stop_list_df(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"stop_id": pd.Series([], dtype="int64"), "phone_e164": pd.Series([], dtype=object)}
        )

    def add_stop(self, phone: str) -> AddStopResult:
        with self.lock:
            delay = self.random.uniform(0, 0.002)
        time.sleep(delay)
        with self.lock:
            self.applied.add(phone)
            return AddStopResult("added", len(self.applied), phone)


class TestStoppedAnywhere:
    # A timeout landing in a garbage-collection callback is "ignored" by Python (the run then ends
    # normally): pytest reports that as a warning.
    @pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    def test_a_timeout_at_any_moment_leaves_one_true_outcome_per_input(self, sqlite_conn):
        """Airflow's own timeout (SIGALRM, an exception in the main thread wherever it is) at 30
        moments of runs with small batches: each input has one row, never ``pending``, and the
        ``added`` rows are exactly the adds applied. (A try stopped before its first write sent
        nothing and records nothing.)"""
        from airflow.sdk.exceptions import AirflowTaskTimeout
        from airflow.sdk.execution_time.timeout import timeout

        config = ResultsTable(sqlite_conn, "stopped", flush_rows=20, flush_seconds=0.05, block_rows=50)
        stopped = 0
        for attempt in range(30):
            numbers = [f"+336{attempt:02d}{i:06d}" for i in range(1500)]
            hook = AppliedHook(seed=attempt)
            results = config.prepare(TaskIdentity("bulk_dag", "run", "add_stops", -1, attempt + 1))
            try:
                with timeout(0.02 + 0.3 * attempt / 30):
                    add_stops(pd.Series(numbers), hook, BulkOptions(max_workers=8), results=results)  # type: ignore[arg-type]
            except AirflowTaskTimeout:
                stopped += 1
            rows = results.read()
            results.close()
            if rows.empty:  # stopped before its first write (normalising, fetching the list)
                assert not hook.applied, attempt
                continue
            assert rows["input_row"].tolist() == list(range(len(numbers))), attempt
            assert set(rows["status"]) <= {"added", "not_processed"}, (attempt, status_counts(rows))
            assert set(rows.loc[rows["status"] == "added", "phone_e164"]) == hook.applied, attempt
        assert stopped >= 20, "too few runs were stopped: the test proves little"
