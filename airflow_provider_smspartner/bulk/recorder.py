"""Records a bulk run in its results table while the run goes, so a killed worker loses little.

Order of writes for one try (each in a transaction of its own, on one writer thread, in order):

1. before any call: the rows settled without a call (``invalid``, ``duplicate``,
   ``skipped_existing``...) and what this try learnt about earlier tries' rows;
2. before a block of calls is sent: its inputs as ``pending`` (the write-ahead rows; the next
   block is written while the current one is being sent, so the calls never wait for it);
3. while the calls run: their outcomes, in batches (every ``flush_rows`` outcomes or
   ``flush_seconds``, whichever comes first), over the ``pending`` rows;
4. at the end: the outcomes settled by the reconciliation, and the inputs never sent;
   or, when the try is stopped (``execution_timeout``, SIGTERM, any exception), on the way out
   (:meth:`RunRecorder.abort`): the outcomes known, then ``not_processed`` for the inputs never sent.

A write that failed on a database error is tried again (``WRITE_ATTEMPTS``), as a replacement of
this try's rows by key (a delete and an insert in one transaction), which is safe to repeat.

Only a SIGKILL leaves ``pending`` rows: at most the outcomes of the last ``flush_seconds`` and the
write-ahead rows of calls never sent (the next try checks them against the list), and never a
missing row of an input that may have been sent. (A call still unanswered when a stopped try ends
is ``pending`` too: whether it landed, only the list can tell.) A write that fails stops the run:
no call is sent that could not be recorded.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from airflow_provider_smspartner.bulk.outcomes import NOT_PROCESSED, PENDING, CallOutcome, merge_row_outcomes
from airflow_provider_smspartner.bulk.results import TryResults, db_error
from airflow_provider_smspartner.bulk.write_thread import Write, WriteThread, wait_writes

log = logging.getLogger(__name__)

#: Writes queued at most before the run waits for the database (bounds memory if it is slow).
MAX_QUEUED_WRITES = 8
#: Seconds :meth:`RunRecorder.abort` waits for the last writes before giving up on them.
ABORT_WAIT_SECONDS = 10.0
#: Attempts of one write; every write replaces rows by key, so trying again is safe.
WRITE_ATTEMPTS = 3
WRITE_BACKOFF_SECONDS = 0.5


class ResultsWriteError(RuntimeError):
    """A write to the results table failed during the run; the run stopped sending calls."""


class RunRecorder:
    """Writes one try's rows while its calls run (see the module docstring for the order).

    Used by the pipeline as the runner's journal: :meth:`reserve` before calls are submitted,
    :meth:`record` for each finished call, :meth:`tick` regularly; then :meth:`finish` (or
    :meth:`abort` when the run is interrupted).

    :param results: The try's rows in the table, prepared (:meth:`ResultsTable.prepare`).
    :param outcomes: The run's outcome table (its static columns: input values, numbers; in
        keyed-hash mode the rows hold their hashes, ``results.row_numbers``).
    :param logger: For the lines on what was written.
    :param clock: Monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        results: TryResults,
        outcomes: pd.DataFrame,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.results = results
        self.logger = logger if logger is not None else log
        self.clock = clock
        self.flush_rows = results.config.flush_rows
        self.flush_seconds = results.config.flush_seconds
        self.block_rows = max(int(results.config.block_rows), 1)
        self.numbers = results.row_numbers(outcomes)
        size = len(outcomes)
        #: What the table holds (or will, once queued writes end) of each row: ``_state`` of it,
        #: ``None`` before its first write.
        self.written: list[tuple[Any, ...] | None] = [None] * size
        #: Rows whose calls have all ended (their outcome is buffered or written).
        self._decided = np.zeros(size, dtype=bool)
        self._item_rows = np.zeros(0, dtype=np.int64)
        self._item_stop_ids: list[int | None] = []
        self._row_calls: dict[int, list[int]] = {}
        self._row_results: dict[int, dict[int, CallOutcome]] = {}
        self._covered = 0  # calls whose rows are queued as pending
        # Write-ahead blocks not waited for yet: (first call of the block, its write). At most the
        # block being sent and the one after it are pending without having been sent.
        self._blocks: deque[tuple[int, Write]] = deque()
        self._buffer: list[tuple[Any, ...]] = []
        self._last_flush = clock()
        self._writes: deque[Write] = deque()
        self._pool = WriteThread("smspartner-results")
        self._failed: BaseException | None = None

    # ------------------------------------------------------------------ before the calls
    def begin(self, outcomes: pd.DataFrame, earlier_updates: pd.DataFrame | None = None) -> None:
        """Write the rows settled without a call and the earlier tries' settled rows; wait for it."""
        if earlier_updates is not None and not earlier_updates.empty:
            self._wait(self._submit(self.results.update_earlier, earlier_updates))
            self.logger.info(
                "Settled %d rows of earlier tries in %s", len(earlier_updates), self.results.describe()
            )
        settled = np.flatnonzero(outcomes["status"].notna().to_numpy())
        self._wait(self._insert_rows(outcomes, settled))

    def plan_calls(
        self, item_rows: Sequence[int] | np.ndarray, item_stop_ids: Sequence[int | None] | None = None
    ) -> None:
        """Tell which row each call belongs to (several calls may share a row), in call order."""
        rows = np.asarray(item_rows, dtype=np.int64)
        row_calls: dict[int, list[int]] = {}
        for index, row in enumerate(rows.tolist()):
            row_calls.setdefault(row, []).append(index)
        self._item_stop_ids = list(item_stop_ids) if item_stop_ids is not None else [None] * len(rows)
        self._row_calls = row_calls
        self._item_rows = rows  # last: until it is set, abort() sees no call planned

    # ------------------------------------------------------------------ the runner's journal
    def reserve(self, count: int) -> None:
        """Make sure the rows of calls ``[0, count)`` are recorded ``pending`` before they are sent;
        queue the next block ahead, so the calls do not wait for it."""
        self.check()
        total = len(self._item_rows)
        count = min(count, total)
        while self._covered < min(count + self.block_rows, total):
            start, stop = self._covered, min(self._covered + self.block_rows, total)
            self._blocks.append((start, self._write_pending(start, stop)))
            self._covered = stop
        while self._blocks and self._blocks[0][0] < count:
            self._wait(self._blocks.popleft()[1])

    def record(self, index: int, outcome: CallOutcome) -> None:
        """Take the outcome of call ``index``; its row is buffered once all its calls have ended.

        A call told again (the runner does when interrupted while telling it) changes nothing.
        """
        row = int(self._item_rows[index])
        if self._decided[row]:
            return
        done = self._row_results.setdefault(row, {})
        done[index] = outcome
        calls = self._row_calls.get(row, [index])
        if len(done) < len(calls):
            return
        merged = merge_row_outcomes([done[i] for i in calls], [self._item_stop_ids[i] for i in calls])
        # In this order, an interruption (a signal's exception) landing anywhere leaves the outcome
        # in the buffer or in ``_row_results`` for abort() to write; at worst it is written twice.
        self._buffer.append(self._outcome_row(row, merged))
        self._decided[row] = True
        del self._row_results[row]
        if len(self._buffer) >= self.flush_rows:
            self.flush()

    def tick(self) -> None:
        """Write the buffered outcomes when ``flush_seconds`` have passed; raise a failed write."""
        self.check()
        if self._buffer and self.clock() - self._last_flush >= self.flush_seconds:
            self.flush()

    # ------------------------------------------------------------------ writes
    def flush(self) -> None:
        """Queue the buffered outcomes for writing (over their ``pending`` rows)."""
        self._last_flush = self.clock()
        if self._buffer:
            # One row per key (a row can be buffered twice after an interruption; see record()).
            self._queue(self.results.replace, list({row[5]: row for row in self._buffer}.values()))
            self._buffer = []  # after: an interruption in between leaves it for abort() to write

    def check(self) -> None:
        """Raise :class:`ResultsWriteError` if a write failed."""
        while self._writes and self._writes[0].done():
            self._result(self._writes.popleft())
        if self._failed is not None:
            raise ResultsWriteError(
                f"Writing {self.results.describe()} failed: {self._failed}. No further call is sent; "
                "the next try checks the inputs left pending against the stop list."
            ) from self._failed

    def finish(self, outcomes: pd.DataFrame) -> int:
        """Write every row whose final state the table does not hold yet; wait for all writes.

        :return: Rows of this try in the table.
        """
        self.flush()
        candidates = {r for r, state in enumerate(self.written) if state is None}
        candidates.update(self._item_rows.tolist())
        final = self.results.rows(outcomes, sorted(candidates), self.numbers)
        new = [row for row in final if self.written[row[5]] is None]
        changed = [row for row in final if self.written[row[5]] not in (None, _state(row))]
        self._queue(self.results.insert, new)
        self._queue(self.results.replace, changed)
        self._drain()
        self.close()
        return sum(state is not None for state in self.written)

    def abort(self, outcomes: pd.DataFrame, reason: str = "an error") -> None:
        """On the way out of a stopped try: record every input, wait a little, never raise.

        Queued in this order, so that a SIGKILL during the writes loses the least: the outcomes of
        the calls that ended, then ``not_processed`` for the inputs whose calls were never sent (over
        their ``pending`` rows first, then the rows not written yet), with the rows settled without
        a call that were not written yet.

        :param outcomes: The run's outcome table (the statuses settled without a call).
        :param reason: What stopped the try, for the notes (an exception's type name).
        """
        try:
            self.flush()
            rows = self._unsent_rows(outcomes, f"not sent: the try stopped ({reason}) before this call")
            over = [row for row in rows if self.written[row[5]] is not None]
            new = [row for row in rows if self.written[row[5]] is None]
            if over:
                self._queue(self.results.replace, over)
            if new:
                self._queue(self.results.insert, new)
            self.logger.info(
                "Stopped by %s: %d inputs recorded not_processed in %s",
                reason,
                sum(row[8] == NOT_PROCESSED for row in rows),
                self.results.describe(),
            )
            late = wait_writes([f for f in self._writes if not f.done()], ABORT_WAIT_SECONDS)
            if late:
                self.logger.warning(
                    "%d writes to %s did not finish in time", len(late), self.results.describe()
                )
            for future in self._writes:
                if future.done() and not future.cancelled() and future.exception() is not None:
                    self.logger.warning(
                        "A write to %s failed: %s", self.results.describe(), future.exception()
                    )
        except BaseException as exc:  # the original interruption matters more
            self.logger.warning("Could not write the last outcomes to %s: %s", self.results.describe(), exc)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ helpers
    def _outcome_row(self, row: int, outcome: CallOutcome) -> tuple[Any, ...]:
        decided = pd.Timestamp(outcome.finished_at or time.time(), unit="s", tz="UTC")
        return self.results._row_tuple(
            row,
            *self.numbers.columns(row),
            outcome.status,
            outcome.stop_id,
            outcome.error_code,
            self.numbers.text(row, outcome.error_message),
            self.numbers.text(row, outcome.note),
            decided,
        )

    def _unsent_rows(self, outcomes: pd.DataFrame, note: str) -> list[tuple[Any, ...]]:
        """The rows a stopped try has not recorded yet, with their final outcome: a row with calls
        not all ended takes the outcomes of those that did and ``not_processed`` for the others
        (the most alarming wins, as for any row); a row without a call its settled status, or
        ``not_processed`` when the try stopped before planning its call."""
        unsent = CallOutcome(NOT_PROCESSED, note=note, finished_at=time.time())
        call_rows = np.unique(self._item_rows)
        rows = []
        for row in call_rows[~self._decided[call_rows]].tolist():
            calls = self._row_calls[row]
            done = self._row_results.get(row, {})
            merged = merge_row_outcomes(
                [done.get(i, unsent) for i in calls], [self._item_stop_ids[i] for i in calls]
            )
            rows.append(self._outcome_row(row, merged))
        without_call = np.ones(len(self.written), dtype=bool)
        without_call[call_rows] = False
        unwritten = np.flatnonzero(without_call & np.array([w is None for w in self.written], dtype=bool))
        settled = outcomes["status"].notna().to_numpy()[unwritten]
        rows += self.results.rows(outcomes, unwritten[settled], self.numbers)
        rows += [self._outcome_row(row, unsent) for row in unwritten[~settled].tolist()]
        return rows

    def _write_pending(self, start: int, stop: int) -> Write:
        rows = [r for r in dict.fromkeys(self._item_rows[start:stop].tolist()) if self.written[r] is None]
        now = pd.Timestamp.now(tz="UTC")
        records = [
            self.results._row_tuple(
                row,
                *self.numbers.columns(row),
                PENDING,
                self._item_stop_ids[self._row_calls[row][0]],
                None,
                None,
                None,
                now,
            )
            for row in rows
        ]
        return self._queue(self.results.insert, records)

    def _insert_rows(self, outcomes: pd.DataFrame, positions: np.ndarray) -> Write:
        return self._queue(self.results.insert, self.results.rows(outcomes, positions, self.numbers))

    def _queue(self, write: Callable[[Any], None], rows: list[tuple[Any, ...]]) -> Write:
        """Queue ``write`` of ``rows``, then note what the table will hold of them. (Noted after: an
        interruption in between makes abort() write them again, which is harmless: a repeated write
        replaces rows by key.)"""
        future = self._submit(write, rows)
        for row in rows:
            self.written[row[5]] = _state(row)
        return future

    def _submit(self, write: Callable[[Any], None], payload: Any) -> Write:
        while len(self._writes) >= MAX_QUEUED_WRITES:
            self._wait(self._writes[0])
            self.check()
        future = self._pool.submit(self._attempt, write, payload)
        self._writes.append(future)
        return future

    def _attempt(self, write: Callable[[Any], None], payload: Any) -> None:
        """Run a write, again after a database error (a dropped connection, a locked SQLite file).

        A repeated write replaces rows by key: an insert whose commit went through unanswered
        would otherwise meet its own rows.
        """
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                (write if attempt == 1 else self.results.replace)(payload)
                return
            except sa.exc.DBAPIError as exc:
                if attempt == WRITE_ATTEMPTS:
                    raise
                delay = WRITE_BACKOFF_SECONDS * 2 ** (attempt - 1)
                self.logger.warning(
                    "Write to %s failed (%s); attempt %d of %d in %.1f s",
                    self.results.describe(),
                    db_error(exc),
                    attempt + 1,
                    WRITE_ATTEMPTS,
                    delay,
                )
                time.sleep(delay)

    def _wait(self, future: Write) -> None:
        self._result(future)
        if self._failed is not None:
            self.check()

    def _result(self, future: Write) -> None:
        try:
            future.result()
        except Exception as exc:
            if self._failed is None:
                self._failed = exc

    def _drain(self) -> None:
        while self._writes:
            self._result(self._writes.popleft())
        self.check()


def _state(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """What of a row can change between two writes: status, stop id, error and note."""
    return row[8:13]
