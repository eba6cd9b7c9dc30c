"""Runs one API call per item on a thread pool, turning every call into a ``CallOutcome``.

The hook does the throttling and the retries (shared by all threads); this module only keeps a
bounded number of calls queued, collects outcomes in item order, and stops at once on an error
that would repeat for every item (a refused API key, a ``Retry-After`` longer than the
connection waits). An optional journal (the results
recorder) is told before calls are submitted and as each one ends; if it fails, or the task is
interrupted (Airflow's ``execution_timeout``, SIGTERM), no further call is sent.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from airflow_provider_smspartner.bulk.outcomes import NOT_PROCESSED, CallOutcome
from airflow_provider_smspartner.bulk.progress import ProgressReporter
from airflow_provider_smspartner.exceptions import SmsPartnerAuthError, SmsPartnerRetryAfterTooLongError
from airflow_provider_smspartner.utils.redaction import redact

T = TypeVar("T")

#: Queued calls per worker: enough to keep every worker busy, few enough that a fatal error leaves
#: little to cancel and a million items never become a million futures.
QUEUE_PER_WORKER = 4
#: Seconds between two ``journal.tick()`` calls at most, while calls are running.
TICK_SECONDS = 0.5
#: Seconds an interrupted run waits for the calls in flight, to record their outcomes.
GRACE_SECONDS = 5.0
#: Errors that stop the run: they would repeat for every item.
STOPPING_ERRORS = (SmsPartnerAuthError, SmsPartnerRetryAfterTooLongError)


class CallJournal(Protocol):
    """What the runner tells while it runs (all from the thread that called :func:`run_calls`).

    Any exception a method raises stops the run: queued calls are dropped and the error propagates.
    """

    def reserve(self, count: int) -> None:
        """Calls ``[0, count)`` are about to be submitted (returns once they may be sent)."""

    def record(self, index: int, outcome: CallOutcome) -> None:
        """Call ``index`` ended with ``outcome``."""

    def tick(self) -> None:
        """Called at least every ``TICK_SECONDS`` while calls run."""


@dataclass
class RunReport:
    """Outcomes of :func:`run_calls`, one per item in item order.

    ``None`` marks an item never attempted because ``fatal`` stopped the run; after a
    ``Retry-After`` too long, every item not sent is a ``not_processed`` outcome instead (see
    :func:`stopped_outcome`).
    """

    outcomes: list[CallOutcome | None]
    fatal: SmsPartnerAuthError | SmsPartnerRetryAfterTooLongError | None = None


def failure_outcome(exc: BaseException) -> CallOutcome:
    """A ``failed`` outcome carrying the error's API code and its redacted text."""
    code = getattr(exc, "code", None)
    message = redact(f"{type(exc).__name__}: {exc}")
    return CallOutcome("failed", error_code=code if isinstance(code, int) else None, error_message=message)


def stopped_outcome(exc: SmsPartnerAuthError | SmsPartnerRetryAfterTooLongError) -> CallOutcome:
    """The outcome of a call that met the error stopping the run: ``failed`` for a refused key;
    for a ``Retry-After`` too long (the API refused the request), ``not_processed`` with the
    server's wait in ``note``, as every item the run then leaves."""
    if isinstance(exc, SmsPartnerRetryAfterTooLongError):
        return CallOutcome(NOT_PROCESSED, note=exc.retry_hint, finished_at=time.time())
    return failure_outcome(exc)


def run_calls(
    items: Sequence[T],
    call: Callable[[T], CallOutcome],
    max_workers: int,
    progress: ProgressReporter,
    journal: CallJournal | None = None,
    grace_seconds: float = GRACE_SECONDS,
) -> RunReport:
    """Call ``call(item)`` for every item on ``max_workers`` threads.

    ``call`` returns the outcome of the answers it expects; any other exception it raises becomes a
    ``failed`` outcome (the hook has retried what was retryable by then), except
    ``SmsPartnerAuthError`` and ``SmsPartnerRetryAfterTooLongError``, which stop the run: queued
    items are dropped (their outcome stays ``None``, or is ``not_processed`` with the server's wait
    for the latter) and only the calls already in flight finish, so a bad key or a long
    ``Retry-After`` costs about ``max_workers`` requests, not one per item.

    :param items: What to call with, one API call each.
    :param call: Thread-safe; typically a bound hook method wrapped to return a ``CallOutcome``.
    :param max_workers: Threads (>= 1).
    :param progress: Advanced once per finished item.
    :param journal: Told of submissions and outcomes (see :class:`CallJournal`).
    :param grace_seconds: When the run is interrupted (an exception from the journal, or one raised
        in this thread, such as Airflow's task timeout), queued calls are dropped and the calls in
        flight get this long to end and be recorded; then the exception propagates.
    :return: The outcomes in item order and the fatal error, if any.
    """
    outcomes: list[CallOutcome | None] = [None] * len(items)
    report = RunReport(outcomes)
    if not items:
        return report
    stopping = threading.Event()

    def guarded(item: T) -> CallOutcome | None:
        # A call dequeued after the stop must not reach the API; the flag is raised here, in the
        # worker, so the other workers see it before the collecting loop does.
        if stopping.is_set():
            return None
        try:
            return call(item)
        except STOPPING_ERRORS:
            stopping.set()
            raise

    next_index = 0
    window = max_workers * QUEUE_PER_WORKER
    pending: dict[Future[CallOutcome | None], int] = {}

    def collect(future: Future[CallOutcome | None]) -> None:
        index = pending.pop(future)
        try:
            outcome = future.result()
        except STOPPING_ERRORS as exc:
            if report.fatal is None:
                report.fatal = exc
            stopping.set()
            outcome = stopped_outcome(exc)
        except Exception as exc:
            outcome = failure_outcome(exc)
        if outcome is not None:
            outcome = replace(outcome, finished_at=outcome.finished_at or time.time())
            outcomes[index] = outcome
            progress.advance()
            if journal is not None:
                journal.record(index, outcome)

    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="smspartner-bulk")
    try:
        while True:
            if journal is not None and next_index < len(items) and not stopping.is_set():
                journal.reserve(min(len(items), next_index + window - len(pending)))
            while next_index < len(items) and len(pending) < window and not stopping.is_set():
                pending[pool.submit(guarded, items[next_index])] = next_index
                next_index += 1
            if not pending:
                break
            finished, _ = wait(pending, timeout=TICK_SECONDS, return_when=FIRST_COMPLETED)
            for future in finished:
                collect(future)
            if journal is not None:
                journal.tick()
    except BaseException:
        # No new call: what is queued is dropped, and a worker that dequeues one anyway sees the flag.
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        in_flight = [f for f in pending if not f.cancelled()]
        done, _ = wait(in_flight, timeout=grace_seconds) if in_flight else (set(), set())
        for future in done:
            with contextlib.suppress(Exception):  # the journal may be what failed; raised below
                collect(future)
        raise
    pool.shutdown(wait=True)
    if isinstance(report.fatal, SmsPartnerRetryAfterTooLongError):
        left = stopped_outcome(report.fatal)
        outcomes[:] = [left if outcome is None else outcome for outcome in outcomes]
    return report
