"""Tests of bulk.progress: progress lines of long runs."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from airflow_provider_smspartner.bulk.progress import ProgressReporter, format_duration
from tests.helpers import FakeClock, RecordingLogger

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class TestProgressReporter:
    def test_logs_each_tenth_and_never_more_often(self):
        clock, logger = FakeClock(), RecordingLogger()
        progress = ProgressReporter(1000, "stop-sms/add", logger, clock=clock)
        for _ in range(1000):
            clock.now += 0.001
            progress.advance()
        assert len(logger.lines) == 10
        assert logger.lines[0].startswith("stop-sms/add: 100/1000 done (10%), 1000.0 req/s, ETA 1 s")
        assert logger.lines[-1].startswith("stop-sms/add: 1000/1000 done (100%)")
        assert logger.lines[-1].endswith("done")

    def test_logs_every_interval_between_tenths(self):
        clock, logger = FakeClock(), RecordingLogger()
        progress = ProgressReporter(10_000, "stop-sms/add", logger, clock=clock, interval=10.0)
        for _ in range(50):  # 2 calls per second for 25 s: no 10 % step reached
            clock.now += 0.5
            progress.advance()
        assert len(logger.lines) == 2
        assert logger.lines[0] == "stop-sms/add: 20/10000 done (0%), 2.0 req/s, ETA 1 h 23 min"

    def test_rate_is_current_not_overall(self):
        clock, logger = FakeClock(), RecordingLogger()
        progress = ProgressReporter(100, "x", logger, clock=clock)
        clock.now += 10.0
        progress.advance(10)  # 1/s over the first 10 s
        clock.now += 1.0
        progress.advance(10)  # then 10/s
        assert "10.0 req/s" in logger.lines[-1]
        assert "ETA 8 s" in logger.lines[-1]

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(0.4, "0 s"), (59, "59 s"), (65, "1 min 05 s"), (7260, "2 h 01 min")],
        ids=["zero", "seconds", "minutes", "hours"],
    )
    def test_format_duration(self, seconds, text):
        assert format_duration(seconds) == text
