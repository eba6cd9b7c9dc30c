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
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from airflow_provider_smspartner.bulk.outcomes import NOT_PROCESSED, PENDING, CallOutcome
from airflow_provider_smspartner.bulk.progress import ProgressReporter
from airflow_provider_smspartner.exceptions import SmsPartnerAuthError, SmsPartnerRetryAfterTooLongError
from airflow_provider_smspartner.utils.redaction import redact

T = TypeVar("T")

#: Queued calls per worker: enough to keep every worker busy, few enough that a fatal error leaves
#: little to cancel and a million items never become a million futures.
QUEUE_PER_WORKER = 4
#: Seconds between two ``journal.tick()`` calls at most, while calls are running.
TICK_SECONDS = 0.5
#: Seconds an interrupted run waits for the calls in flight, to record their outcomes. Airflow sends
#: SIGKILL 5 s after SIGTERM: this leaves the results table the rest to record every input.
GRACE_SECONDS = 2.0
#: Errors that stop the run: they would repeat for every item.
STOPPING_ERRORS = (SmsPartnerAuthError, SmsPartnerRetryAfterTooLongError)


class CallJournal(Protocol):
    """What the runner tells while it runs (all from the thread that called :func:`run_calls`).

    Any exception a method raises stops the run: queued calls are dropped and the error propagates.
    """

    def reserve(self, count: int) -> None:
        """Calls ``[0, count)`` are about to be submitted (returns once they may be sent)."""

    def record(self, index: int, outcome: CallOutcome) -> None:
        """Call ``index`` ended with ``outcome`` (told again when the run was interrupted while
        telling it: a signal's exception can land anywhere)."""

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


class _CallRun(Generic[T]):
    """The state one :func:`run_calls` shares between its workers and its collecting loop.

    The workers run :meth:`guarded`; everything else runs in the thread that called
    :func:`run_calls`, where an interruption (Airflow's timeout, SIGTERM) can raise anywhere.
    """

    def __init__(
        self,
        items: Sequence[T],
        call: Callable[[T], CallOutcome],
        max_workers: int,
        progress: ProgressReporter,
        journal: CallJournal | None,
    ) -> None:
        self.items = items
        self.call = call
        self.progress = progress
        self.journal = journal
        self.outcomes: list[CallOutcome | None] = [None] * len(items)
        self.report = RunReport(self.outcomes)
        self.stopping = threading.Event()
        # Kept by the workers, not in futures: Airflow's timeout (and SIGTERM) raises in this thread
        # wherever it is, and concurrent.futures.wait() can then leave futures' locks held, which
        # blocks the workers ending them. Worker-side records also let the interruption path find
        # every call begun, even one whose submission the exception cut short.
        self.begun: set[int] = set()  # calls a worker has begun and the loop has not taken yet
        self.ended: dict[int, CallOutcome | BaseException | None] = {}  # what they ended in (None: not sent)
        self.finished: queue.SimpleQueue[int] = queue.SimpleQueue()  # wakes the loop as calls end
        self.next_index = 0
        self.taken = 0
        self.window = max_workers * QUEUE_PER_WORKER

    def guarded(self, index: int) -> None:
        """Make call ``index`` (in a worker) and keep what it ended in."""
        result: CallOutcome | BaseException | None = None
        # A call dequeued after the stop must not reach the API; the flag is raised here, in the
        # worker, so the other workers see it before the collecting loop does.
        if not self.stopping.is_set():
            self.begun.add(index)
            try:
                result = self.call(self.items[index])
            except STOPPING_ERRORS as exc:
                self.stopping.set()
                result = exc
            except BaseException as exc:
                result = exc
        self.ended[index] = result
        self.finished.put(index)

    def take(self, index: int) -> None:
        """Turn what call ``index`` ended in into its outcome, and tell it."""
        # Forgotten only once told to the journal: an interruption landing here leaves the call
        # for the interruption path to tell (twice at worst, which the journal allows).
        result = self.ended[index]
        outcome: CallOutcome | None
        if isinstance(result, STOPPING_ERRORS):
            if self.report.fatal is None:
                self.report.fatal = result
            self.stopping.set()
            outcome = stopped_outcome(result)
        elif isinstance(result, BaseException):
            outcome = failure_outcome(result)
        else:
            outcome = result
        if outcome is not None:
            outcome = replace(outcome, finished_at=outcome.finished_at or time.time())
            self.outcomes[index] = outcome
            self.progress.advance()
            if self.journal is not None:
                self.journal.record(index, outcome)
        self.taken += 1
        self.begun.discard(index)
        self.ended.pop(index, None)

    def loop(self, pool: ThreadPoolExecutor) -> None:
        """Keep up to ``window`` calls queued and take them as they end, until all are taken."""
        while True:
            self._submit(pool)
            if self.taken >= self.next_index:
                break
            with contextlib.suppress(queue.Empty):
                self.take(self.finished.get(timeout=TICK_SECONDS))
                while True:
                    self.take(self.finished.get_nowait())
            if self.journal is not None:
                self.journal.tick()

    def _submit(self, pool: ThreadPoolExecutor) -> None:
        """Reserve, then submit, the calls the window has room for (none once stopping)."""
        count = len(self.items)
        if self.journal is not None and self.next_index < count and not self.stopping.is_set():
            self.journal.reserve(min(count, self.next_index + self.window - (self.next_index - self.taken)))
        while (
            self.next_index < count
            and self.next_index - self.taken < self.window
            and not self.stopping.is_set()
        ):
            pool.submit(self.guarded, self.next_index)
            self.next_index += 1

    def interrupt(self, pool: ThreadPoolExecutor, grace_seconds: float) -> None:
        """Drop what is queued, give the calls in flight ``grace_seconds`` to end, tell every call begun."""
        # No new call: what is queued is dropped, and a worker that dequeues one anyway sees the flag.
        self.stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace_seconds
        while (
            any(i not in self.ended for i in set(self.begun))
            and (remaining := deadline - time.monotonic()) > 0
        ):
            with contextlib.suppress(queue.Empty):
                self.finished.get(timeout=remaining)
        for index in sorted(set(self.begun) | set(self.ended)):
            with contextlib.suppress(Exception):  # the journal may be what failed; raised by the caller
                if index in self.ended:
                    self.take(index)
                else:  # sent (or about to be) and unanswered: the next try checks it against the list
                    self.outcomes[index] = unanswered = CallOutcome(
                        PENDING, note="no answer before the try stopped", unapplied_status=NOT_PROCESSED
                    )
                    if self.journal is not None:
                        self.journal.record(index, unanswered)

    def settle_unsent(self) -> None:
        """After a ``Retry-After`` too long, every item not sent is ``not_processed``."""
        if isinstance(self.report.fatal, SmsPartnerRetryAfterTooLongError):
            left = stopped_outcome(self.report.fatal)
            self.outcomes[:] = [left if outcome is None else outcome for outcome in self.outcomes]


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
        flight get this long to end and be recorded; a call still unanswered then is recorded
        ``pending``; then the exception propagates.
    :return: The outcomes in item order and the fatal error, if any.
    """
    run = _CallRun(items, call, max_workers, progress, journal)
    if not items:
        return run.report
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="smspartner-bulk")
    try:
        run.loop(pool)
    except BaseException:
        run.interrupt(pool, grace_seconds)
        raise
    pool.shutdown(wait=True)
    run.settle_unsent()
    return run.report
