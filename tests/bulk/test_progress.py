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
        progress = ProgressReporter(200, "x", logger, clock=clock, window=10.0)
        for _ in range(20):  # 1/s for 20 s
            clock.now += 1.0
            progress.advance()
        for _ in range(100):  # then 10/s for 10 s
            clock.now += 0.1
            progress.advance()
        rate = float(logger.lines[-1].split(", ")[1].split()[0])
        assert rate == pytest.approx(10.0, rel=0.1)  # the last 10 s, not the 4/s since the start

    def test_two_lines_a_moment_apart_agree(self):
        # Lines came 0.2 s apart at 2.9 then 22.4 req/s: a burst of answers after a slow patch.
        clock, logger = FakeClock(), RecordingLogger()
        progress = ProgressReporter(1000, "x", logger, clock=clock, window=10.0)
        for _ in range(99):  # 10/s
            clock.now += 0.1
            progress.advance()
        clock.now += 2.0  # a slow patch, then a burst of 5 answers within 0.2 s crossing 10 %
        progress.advance(1)
        clock.now += 0.2
        progress.advance(5)
        rates = [float(line.split(", ")[1].split()[0]) for line in logger.lines]
        assert 7.0 <= rates[-1] <= 10.0  # about (105 - 20 done 10 s before) / 10 s
        assert max(rates) / min(rates) < 1.5  # was 0.5 then 25 req/s: the rate since the line before

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(0.4, "0 s"), (59, "59 s"), (65, "1 min 05 s"), (7260, "2 h 01 min")],
        ids=["zero", "seconds", "minutes", "hours"],
    )
    def test_format_duration(self, seconds, text):
        assert format_duration(seconds) == text
