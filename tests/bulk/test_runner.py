"""Tests of bulk.runner: concurrent calls, outcomes in order, stop on auth errors."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import numpy as np

from airflow_provider_smspartner.bulk.progress import ProgressReporter
from airflow_provider_smspartner.bulk.runner import CallOutcome, run_calls
from airflow_provider_smspartner.exceptions import SmsPartnerAuthError, SmsPartnerServerError
from tests.helpers import RecordingLogger

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class TestRunCalls:
    def test_every_item_gets_its_outcome_in_order(self):
        progress = ProgressReporter(50, "x", RecordingLogger())

        def call(item: int) -> CallOutcome:
            if item % 10 == 0:
                raise SmsPartnerServerError("server error (HTTP 500)", http_status=500)
            return CallOutcome("added", stop_id=item)

        report = run_calls(list(range(50)), call, max_workers=4, progress=progress)
        assert report.fatal is None
        assert [o.stop_id for o in report.outcomes if o and o.status == "added"] == [
            i for i in range(50) if i % 10
        ]
        failed = [o for o in report.outcomes if o and o.status == "failed"]
        assert len(failed) == 5
        assert "SmsPartnerServerError" in (failed[0].error_message or "")
        assert all(o is not None and o.finished_at > 0 for o in report.outcomes)
        assert progress.done == 50

    def test_auth_error_stops_the_run(self):
        calls: list[int] = []
        lock = threading.Lock()

        def call(item: int) -> CallOutcome:
            with lock:
                calls.append(item)
            raise SmsPartnerAuthError("Invalid API key", code=10, http_status=401)

        report = run_calls(list(range(1000)), call, max_workers=4, progress=ProgressReporter(1000, "x"))
        assert isinstance(report.fatal, SmsPartnerAuthError)
        assert len(calls) <= 4
        attempted = [o for o in report.outcomes if o is not None]
        assert len(attempted) == len(calls)
        assert all(o.status == "failed" and o.error_code == 10 for o in attempted)
        assert np.sum([o is None for o in report.outcomes]) == 1000 - len(calls)

    def test_no_items(self):
        report = run_calls(
            [], lambda item: CallOutcome("added"), max_workers=8, progress=ProgressReporter(0, "x")
        )
        assert report.outcomes == []
