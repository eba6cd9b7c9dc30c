"""Client-side request throttle shared by every hook of one connection in a process.

:mod:`airflow_provider_smspartner.api.rate_limit` holds its fleet-wide twin, shared through Redis.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Protocol

#: Fraction of the configured rate actually used (see RequestThrottle).
HEADROOM = 0.98
WINDOW = 1.0


class PauseTooLong(Exception):
    """``acquire`` refused to wait: the pause in force (a 429's ``Retry-After``) lasts longer than
    the caller accepts. Nothing was reserved.

    :param seconds: Seconds left in the pause.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"paused for {seconds:.3f} s more")
        self.seconds = seconds


class Throttle(Protocol):
    """What the hook needs of a throttle: per process (:class:`RequestThrottle`) or shared by a
    fleet (``rate_limit.SharedRateLimit``)."""

    rate: float

    def acquire(self, max_pause: float | None = None) -> float:
        """Block until the caller may send a request; return the seconds waited.

        :raises PauseTooLong: a pause longer than ``max_pause`` seconds is in force.
        """
        ...

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds``."""
        ...


def window_allowance(rate: float) -> int:
    """Requests allowed in any sliding second at ``rate``: as many as the spacing itself lets through.

    Requests spaced ``1 / (rate * HEADROOM)`` apart put at most ``ceil(rate * HEADROOM)`` in any
    second, so the window only ever stops a caller that woke up late. (Flooring instead, as an
    earlier version did, capped 7/s at 6/s.)
    """
    return max(1, math.ceil(round(rate * HEADROOM * WINDOW, 9)))


class RequestThrottle:
    """Keeps requests under ``rate`` per second, across all threads that share it.

    Three rules, all enforced at the moment a request is released:

    - spacing: each caller reserves the next free time slot (``1 / rate`` apart) under a lock and
      sleeps outside it (no thread holds the lock while it waits);
    - releases keep the pace too (the generic cell rate algorithm, with a tolerance of half an
      interval): callers that woke up late (GIL, a garbage collection, the scheduler), whose slots
      all passed while the process stood still, leave one interval apart, not in one burst; and no
      two releases are ever closer than half an interval. A burst would come back a second later,
      as 429s: the window below frees its places all at once, while the server still counts the
      first burst, which reached it spread out (sent by threads catching up) and later than its
      release. The tolerance keeps a caller's lateness (up to half an interval) from being passed
      on to the next ones, so the rate holds;
    - a sliding one-second window: no more than :func:`window_allowance` requests (what the
      spacing lets through, never more than ``rate`` rounded up) are released in any second.

    Requests are spaced 2% under ``rate``: network jitter bunches requests up on their way to the
    server, and at exactly the server's limit a single 429 (with ``Retry-After``) would pause every
    thread for a second.

    :meth:`pause` (a 429 with ``Retry-After``) holds every caller until the pause ends, also those
    already waiting for a slot reserved before it: a released caller re-checks the pause, and a
    caller that finds one takes a new slot after it, so the pause does not end in a burst. A
    caller that accepts shorter pauses only (``acquire(max_pause=...)``) gets
    :class:`PauseTooLong` instead of waiting.

    :param rate: Requests per second (> 0).
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self._interval = 1.0 / (rate * HEADROOM)
        self._per_window = window_allowance(rate)
        self._next_slot = 0.0
        #: When the next release is due at the pace of the releases so far (see the class docstring).
        self._release_at = 0.0
        self._paused_until = 0.0
        self._released: deque[float] = deque()
        self._lock = threading.Lock()

    def _reserve(self, now: float) -> float:
        # Caller holds the lock.
        slot = max(now, self._next_slot, self._paused_until)
        self._next_slot = slot + self._interval
        return slot

    def acquire(self, max_pause: float | None = None) -> float:
        """Block until this caller may send a request; return the seconds waited.

        :param max_pause: Longest pause to wait out, in seconds (``None``: any).
        :raises PauseTooLong: a longer pause is in force, or begins while this caller waits.
        """
        started = time.monotonic()
        with self._lock:
            self._check_pause(started, max_pause)
            slot = self._reserve(started)
        while True:
            wait = slot - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self._lock:
                now = time.monotonic()
                if now < self._paused_until:
                    # A pause began while this caller waited: its slot is void.
                    self._check_pause(now, max_pause)
                    slot = self._reserve(now)
                    continue
                while self._released and self._released[0] <= now - WINDOW:
                    self._released.popleft()
                earliest = self._release_at - self._interval / 2
                if now < earliest:
                    # Other callers whose slots passed too are leaving: at the pace, not all at once.
                    slot = earliest
                    continue
                if len(self._released) < self._per_window:
                    self._released.append(now)
                    self._release_at = max(self._release_at, now) + self._interval
                    return now - started
                slot = self._released[0] + WINDOW

    def _check_pause(self, now: float, max_pause: float | None) -> None:
        # Caller holds the lock.
        if max_pause is not None and self._paused_until - now > max_pause:
            raise PauseTooLong(self._paused_until - now)

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds`` (a 429 with ``Retry-After`` applies to the whole client).

        Callers already waiting in :meth:`acquire` wait too; a shorter pause never shortens a longer one.
        """
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    @property
    def paused_until(self) -> float:
        """``time.monotonic()`` value until which no caller is released (in the past when not paused)."""
        with self._lock:
            return self._paused_until


_registry: dict[tuple[str, float], RequestThrottle] = {}
_registry_lock = threading.Lock()


def shared_throttle(key: str, rate: float) -> RequestThrottle:
    """Return the process-wide throttle for ``key`` (a connection id) at ``rate`` requests per second."""
    with _registry_lock:
        throttle = _registry.get((key, rate))
        if throttle is None:
            throttle = _registry[(key, rate)] = RequestThrottle(rate)
        return throttle
