"""Client-side request throttle shared by every hook of one connection in a process."""

from __future__ import annotations

import math
import threading
import time
from collections import deque

#: Fraction of the configured rate actually used (see RequestThrottle).
HEADROOM = 0.98
WINDOW = 1.0


class RequestThrottle:
    """Keeps requests under ``rate`` per second, across all threads that share it.

    Two rules, both enforced at the moment a request is released:

    - spacing: each caller reserves the next free time slot (``1 / rate`` apart) under a lock and
      sleeps outside it, so threads never wait on each other longer than their own slot;
    - a sliding one-second window: a thread that woke up late (GIL, scheduler) cannot bunch up with
      the next slots, because no more than ``rate`` (less the headroom) requests are released in
      any second.

    Requests are spaced 2% under ``rate``: network jitter bunches requests up on their way to the
    server, and at exactly the server's limit a single 429 (with ``Retry-After``) would pause every
    thread for a second.

    :param rate: Requests per second (> 0).
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self._interval = 1.0 / (rate * HEADROOM)
        self._per_window = max(1, math.floor(rate * HEADROOM * WINDOW))
        self._next_slot = 0.0
        self._released: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until this caller may send a request; return the seconds waited."""
        started = time.monotonic()
        with self._lock:
            slot = max(started, self._next_slot)
            self._next_slot = slot + self._interval
        if slot > started:
            time.sleep(slot - started)
        while True:
            with self._lock:
                now = time.monotonic()
                while self._released and self._released[0] <= now - WINDOW:
                    self._released.popleft()
                if len(self._released) < self._per_window:
                    self._released.append(now)
                    return now - started
                wait = self._released[0] + WINDOW - now
            time.sleep(wait)

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds`` (a 429 with ``Retry-After`` applies to the whole client)."""
        with self._lock:
            self._next_slot = max(self._next_slot, time.monotonic() + seconds)


_registry: dict[tuple[str, float], RequestThrottle] = {}
_registry_lock = threading.Lock()


def shared_throttle(key: str, rate: float) -> RequestThrottle:
    """Return the process-wide throttle for ``key`` (a connection id) at ``rate`` requests per second."""
    with _registry_lock:
        throttle = _registry.get((key, rate))
        if throttle is None:
            throttle = _registry[(key, rate)] = RequestThrottle(rate)
        return throttle
