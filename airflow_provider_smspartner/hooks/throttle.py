"""Client-side request throttle shared by every hook of one connection in a process."""

from __future__ import annotations

import threading
import time

#: Fraction of the configured rate actually used (see RequestThrottle).
HEADROOM = 0.98


class RequestThrottle:
    """Spaces requests at most ``rate`` per second, across all threads that share it.

    Each caller reserves the next free time slot under a lock and sleeps outside it, so threads
    never wait on each other longer than their own slot. There is no burst allowance: the rate is
    a hard ceiling over any window, which is what keeps a bulk add under the API limit. Requests
    are spaced 2% under ``rate``: network and scheduling jitter bunch requests up on their way to
    the server, and at exactly the server's limit a single 429 (with ``Retry-After``) would pause
    every thread for a second.

    :param rate: Requests per second (> 0).
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self._interval = 1.0 / (rate * HEADROOM)
        self._next_slot = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until this caller may send a request; return the seconds waited."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval
        wait = slot - now
        if wait > 0:
            time.sleep(wait)
        return wait

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
