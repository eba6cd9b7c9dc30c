"""One thread that runs the results table's writes in order, driven from the task's main thread
with operations an interruption cannot leave half done.

Airflow's ``execution_timeout`` (and the SIGTERM of ``on_kill``) raises an exception in the main
thread wherever it is. Landing inside a ``threading.Condition`` (what ``ThreadPoolExecutor.submit``
and ``Future.result`` use) it can leave the condition's lock held or released out of turn: the next
submit then waits forever, or a wait ends in ``RuntimeError: cannot release un-acquired lock``. So
the main thread here only makes single C-level calls: ``SimpleQueue.put`` to hand a write over and
``Lock.acquire`` (with a timeout) to wait for it; the worker thread does the rest.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any


class Write:
    """A queued write: ``done()``, ``result(timeout)``, ``exception()``, ``cancelled()``."""

    def __init__(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.error: BaseException | None = None
        self.skipped = False
        self.finished = False
        self._ended = threading.Lock()
        self._ended.acquire()  # released by the worker when the write has run (or was skipped)

    def done(self) -> bool:
        return self.finished

    def cancelled(self) -> bool:
        return self.skipped

    def exception(self) -> BaseException | None:
        return self.error if self.finished else None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the write has run; return whether it has."""
        if self.finished:
            return True
        if self._ended.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._ended.release()  # later waits return at once
        return self.finished

    def result(self, timeout: float | None = None) -> None:
        """Wait for the write; raise what it raised.

        :raises TimeoutError: it has not run within ``timeout`` seconds.
        """
        if not self.wait(timeout):
            raise TimeoutError("the write has not run yet")
        if self.error is not None:
            raise self.error


class WriteThread:
    """Runs :class:`Write` jobs one after another in a daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._cancel = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., None], *args: Any) -> Write:
        job = Write(fn, args)
        self._jobs.put(job)
        return job

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop after the queued writes (skipping them with ``cancel_futures``)."""
        self._cancel = self._cancel or cancel_futures
        self._jobs.put(None)
        if wait:
            self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._cancel:
                    job.skipped = True
                else:
                    job.fn(*job.args)
            except BaseException as exc:
                job.error = exc
            finally:
                job.finished = True
                job._ended.release()


def wait_writes(writes: Iterable[Write], timeout: float) -> list[Write]:
    """Wait for ``writes`` until ``timeout`` seconds have passed; return those not run by then."""
    deadline = time.monotonic() + timeout
    late = []
    for write in writes:
        if not write.wait(max(deadline - time.monotonic(), 0.0)):
            late.append(write)
    return late
