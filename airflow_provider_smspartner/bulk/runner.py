"""Runs one API call per item on a thread pool, turning every call into a ``CallOutcome``.

The hook does the throttling and the retries (shared by all threads); this module only keeps a
bounded number of calls queued, collects outcomes in item order, and stops at once on an error
that would repeat for every item (a refused API key).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import TypeVar

from airflow_provider_smspartner.bulk.outcomes import CallOutcome
from airflow_provider_smspartner.bulk.progress import ProgressReporter
from airflow_provider_smspartner.exceptions import SmsPartnerAuthError
from airflow_provider_smspartner.utils.redaction import redact

T = TypeVar("T")

#: Queued calls per worker: enough to keep every worker busy, few enough that a fatal error leaves
#: little to cancel and a million items never become a million futures.
QUEUE_PER_WORKER = 4


@dataclass
class RunReport:
    """Outcomes of :func:`run_calls`, one per item in item order.

    ``None`` marks an item never attempted because ``fatal`` stopped the run.
    """

    outcomes: list[CallOutcome | None]
    fatal: SmsPartnerAuthError | None = None


def failure_outcome(exc: BaseException) -> CallOutcome:
    """A ``failed`` outcome carrying the error's API code and its redacted text."""
    code = getattr(exc, "code", None)
    message = redact(f"{type(exc).__name__}: {exc}")
    return CallOutcome("failed", error_code=code if isinstance(code, int) else None, error_message=message)


def run_calls(
    items: Sequence[T],
    call: Callable[[T], CallOutcome],
    max_workers: int,
    progress: ProgressReporter,
) -> RunReport:
    """Call ``call(item)`` for every item on ``max_workers`` threads.

    ``call`` returns the outcome of the answers it expects; any other exception it raises becomes a
    ``failed`` outcome (the hook has retried what was retryable by then), except
    ``SmsPartnerAuthError``, which stops the run: queued items are dropped (their outcome stays
    ``None``) and only the calls already in flight finish, so a bad key costs about ``max_workers``
    requests, not one per item.

    :param items: What to call with, one API call each.
    :param call: Thread-safe; typically a bound hook method wrapped to return a ``CallOutcome``.
    :param max_workers: Threads (>= 1).
    :param progress: Advanced once per finished item.
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
        except SmsPartnerAuthError:
            stopping.set()
            raise

    next_index = 0
    window = max_workers * QUEUE_PER_WORKER
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="smspartner-bulk") as pool:
        pending: dict[Future[CallOutcome | None], int] = {}
        while True:
            while next_index < len(items) and len(pending) < window and not stopping.is_set():
                pending[pool.submit(guarded, items[next_index])] = next_index
                next_index += 1
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                index = pending.pop(future)
                try:
                    outcome = future.result()
                except SmsPartnerAuthError as exc:
                    if report.fatal is None:
                        report.fatal = exc
                    stopping.set()
                    outcome = failure_outcome(exc)
                except Exception as exc:
                    outcome = failure_outcome(exc)
                if outcome is not None:
                    outcomes[index] = replace(outcome, finished_at=outcome.finished_at or time.time())
                    progress.advance()
    return report
