"""Progress lines for long bulk runs: done/total, current rate and ETA, rate-limited in the log."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``2 h 07 min``: short enough for a log line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressReporter:
    """Logs the progress of ``total`` calls: at most one line per ``interval`` seconds, plus one at
    each 10 % step (so short runs still show their shape and the last line is always 100 %).

    Each line gives done/total, the current rate (calls per second over the last ``window``
    seconds, so two lines a moment apart agree instead of jumping with the last burst) and an ETA
    at that rate. Call :meth:`advance` from one thread only (the collecting loop).

    :param total: Number of calls the run will make.
    :param label: What is counted, e.g. ``"stop-sms/add"``.
    :param logger: Anything with ``info(msg, *args)``; the module logger by default.
    :param clock: Monotonic clock in seconds; injectable for tests.
    :param interval: Minimum seconds between two time-based lines.
    :param window: Seconds the current rate is averaged over.
    """

    def __init__(
        self,
        total: int,
        label: str,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 10.0,
        window: float = 10.0,
    ) -> None:
        self.total = total
        self.label = label
        self.logger = logger if logger is not None else log
        self.clock = clock
        self.interval = interval
        self.done = 0
        self.started = clock()
        self.window = window
        self._last_time = self.started
        self._last_decile = 0
        #: ``(time, done)`` after each advance within the window, and the last one before it.
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])

    def advance(self, count: int = 1) -> None:
        """Record ``count`` more finished calls and log a line when one is due."""
        self.done += count
        now = self.clock()
        self._samples.append((now, self.done))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        decile = self.done * 10 // self.total if self.total else 10
        if decile > self._last_decile or now - self._last_time >= self.interval:
            self._report(now)
            self._last_decile = decile

    def rate(self, now: float | None = None) -> float:
        """Calls per second over the last ``window`` seconds (since the start, in a shorter run)."""
        now = self.clock() if now is None else now
        since, done_then = self._samples[0]
        elapsed = now - since
        return (self.done - done_then) / elapsed if elapsed > 0 else 0.0

    def _report(self, now: float) -> None:
        rate = self.rate(now)
        remaining = self.total - self.done
        if remaining <= 0:
            eta = "done"
        elif rate > 0:
            eta = f"ETA {format_duration(remaining / rate)}"
        else:
            eta = "ETA unknown"
        percent = 100.0 * self.done / self.total if self.total else 100.0
        self.logger.info(
            "%s: %d/%d done (%.0f%%), %.1f req/s, %s",
            self.label,
            self.done,
            self.total,
            percent,
            rate,
            eta,
        )
        self._last_time = now
