"""Tests of bulk.runner: concurrent calls, outcomes in order, stop on auth errors."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from airflow_provider_smspartner.bulk.progress import ProgressReporter
from airflow_provider_smspartner.bulk.runner import QUEUE_PER_WORKER, CallOutcome, run_calls
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


class RecordingJournal:
    """A journal that notes what the runner tells it and can fail at the n-th outcome."""

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None) -> None:
        self.reserved = 0
        self.recorded: list[int] = []
        self.ticks = 0
        self.fail_at = fail_at
        self.error = error

    def reserve(self, count: int) -> None:
        self.reserved = max(self.reserved, count)

    def record(self, index: int, outcome: CallOutcome) -> None:
        self.recorded.append(index)
        if self.fail_at is not None and len(self.recorded) == self.fail_at:
            assert self.error is not None
            raise self.error

    def tick(self) -> None:
        self.ticks += 1


class TestJournal:
    def test_every_call_is_reserved_before_it_is_sent(self):
        journal = RecordingJournal()
        early: list[int] = []

        def call(item: int) -> CallOutcome:
            if item >= journal.reserved:
                early.append(item)
            return CallOutcome("added", stop_id=item)

        run_calls(list(range(300)), call, max_workers=4, progress=ProgressReporter(300, "x"), journal=journal)
        assert not early
        assert sorted(journal.recorded) == list(range(300))
        assert journal.ticks > 0

    @pytest.mark.parametrize(
        "error",
        [RuntimeError("results table down"), KeyboardInterrupt()],
        ids=["journal-fails", "interrupted-like-a-task-timeout"],
    )
    def test_a_failing_journal_or_an_interruption_stops_the_run(self, error):
        journal = RecordingJournal(fail_at=10, error=error)
        sent: list[int] = []
        lock = threading.Lock()

        def call(item: int) -> CallOutcome:
            with lock:
                sent.append(item)
            time.sleep(0.002)
            return CallOutcome("added", stop_id=item)

        with pytest.raises(type(error)):
            run_calls(
                list(range(1000)), call, max_workers=4, progress=ProgressReporter(1000, "x"), journal=journal
            )
        time.sleep(0.1)  # the calls in flight end on their own
        assert len(sent) <= 10 + 4 * QUEUE_PER_WORKER + 4
        # The calls that ended within the grace period were told to the journal too: every call
        # that was sent, not only the ten before the failure (the tenth twice: telling it failed).
        assert len(set(journal.recorded)) >= 10
        assert sorted(set(journal.recorded)) == sorted(sent)


class Interrupted(BaseException):
    """Stands for Airflow's ``AirflowTaskTimeout``: raised by a signal handler in the main thread."""


class StatusJournal:
    """A journal that keeps the status told for each call."""

    def __init__(self) -> None:
        self.told: dict[int, str] = {}

    def reserve(self, count: int) -> None:
        pass

    def record(self, index: int, outcome: CallOutcome) -> None:
        self.told[index] = outcome.status

    def tick(self) -> None:
        pass


class TestInterruptedAnywhere:
    @pytest.mark.slow
    def test_a_signal_at_any_moment_leaves_no_call_untold(self):
        """SIGALRM raises at 150 random moments of runs (inside submissions, collections, waits):
        every call a worker sent is told to the journal with its own outcome, at once (the workers
        never wait on a lock the interrupted thread left held).

        In an interpreter of its own: an exception raised at any moment may also land inside the
        standard library's own lock code and leave one of its locks held (seen: a logging
        handler's lock, which later hung the threads of another test of the same pytest worker
        as they logged); whatever it breaks there ends with that interpreter."""
        done = subprocess.run(
            [sys.executable, "-c", "from tests.bulk.test_runner import interrupt_runs; interrupt_runs(150)"],
            cwd=Path(__file__).resolve().parents[2],  # the project root: tests importable
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip().endswith("150 interrupted runs: every call sent was told"), done.stdout


def interrupt_runs(attempts: int) -> None:
    """The body of :class:`TestInterruptedAnywhere`, run in a subprocess: raises on a failure,
    prints a last line on success."""
    rng = random.Random(19)
    sent: list[int] = []
    lock = threading.Lock()

    def call(item: int) -> CallOutcome:
        with lock:
            sent.append(item)
        return CallOutcome("added", stop_id=item)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        for attempt in range(attempts):
            sent.clear()
            journal = StatusJournal()
            started = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.001, 0.03))
            try:
                run_calls(list(range(3000)), call, 8, ProgressReporter(3000, "x"), journal=journal)
            except Interrupted:
                pass
            except RuntimeError as exc:
                # The signal landed inside the standard library's own lock code (a
                # ThreadPoolExecutor's semaphore), which failed as it unwound ("release
                # unlocked lock", seen once in CI): the run still ended; what it told the
                # journal is checked below all the same.
                if not isinstance(exc.__context__, Interrupted):
                    raise
            signal.setitimer(signal.ITIMER_REAL, 0)
            assert time.monotonic() - started < 1.5, f"attempt {attempt}: the calls in flight hung"
            with lock:
                assert sorted(journal.told) == sorted(sent), attempt
            assert set(journal.told.values()) <= {"added"}, attempt
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    print(f"{attempts} interrupted runs: every call sent was told")
