"""What the fleet-wide rate test measures: the releases the provider controls, and how late they arrive.

A shared budget (``api.rate_limit.SharedRateLimit``) releases each request at a moment of the
Redis server's clock and guarantees that no more than ``window_allowance(rate)`` are released in
any sliding second. Between a release and its arrival at the API lie the worker's scheduling, the
HTTP client and the network: on a loaded machine some requests leave late and arrive bunched up
with the next ones, so a server counting arrivals per sliding second can see more than the
budget. The deployment test therefore checks three things apart:

- the provider's guarantee, on the releases read from Redis (:class:`ReleaseLog`);
- the jitter: every arrival matched to its own earlier release, the longest release-to-arrival
  delay (:func:`longest_delay`) stays within the stated allowance;
- the server's count: its busiest second holds no more than the releases of any second widened
  by that allowance.

Pure functions here (:func:`rate_problems`), unit-tested on fabricated timestamps in
``test_rate_window.py``; :class:`ReleaseLog` needs Redis.
"""

from __future__ import annotations

import threading
from itertools import pairwise
from typing import Any

from airflow_provider_smspartner.api.rate_limit import redis_keys
from airflow_provider_smspartner.api.throttle import window_allowance
from tests.helpers import max_in_window

#: The window key prunes releases older than one second at every request: read it more often.
POLL_SECONDS = 0.1
#: Longest gap between two reads that still sees every release (each lives a second at least).
MAX_READ_GAP = 0.9


def longest_delay(releases: list[float], arrivals: list[float]) -> float:
    """The longest release-to-arrival delay when each arrival is matched to its own earlier release.

    Of all matchings (one release per arrival, never after it), the one that pairs each arrival,
    latest first, with the latest release not yet taken has the smallest longest delay: that is
    what is returned, so a delay reported here is one no other matching could shorten. Releases
    left over (a request released and never sent) are allowed.

    :return: Seconds; ``inf`` when an arrival has no release before it (the releases were not all
        read, or a request bypassed the budget).
    """
    free = sorted(releases)
    longest = 0.0
    for arrival in sorted(arrivals, reverse=True):
        while free and free[-1] > arrival:
            free.pop()  # released after this arrival (and every earlier one): unused
        if not free:
            return float("inf")
        longest = max(longest, arrival - free.pop())
    return longest


def rate_problems(
    releases: list[float], arrivals: list[float], rate: float, jitter: float, busiest_arrivals: int
) -> list[str]:
    """The guarantees a run broke (an empty list when it kept them all).

    :param releases: Release times of every request of the budget (seconds, one clock).
    :param arrivals: Arrival times at the server of every request (seconds, the same clock).
    :param rate: The budget's ``requests_per_second``.
    :param jitter: Seconds a request may take from release to arrival.
    :param busiest_arrivals: The server's own count of its busiest sliding second.
    """
    problems = []
    allowed = window_allowance(rate)
    released = max_in_window(releases)
    if released > allowed:
        problems.append(f"the budget released {released} requests in one second (at most {allowed})")
    delay = longest_delay(releases, arrivals)
    if delay > jitter:
        problems.append(f"a request arrived {delay:.3f} s after its release (allowance {jitter} s)")
    widened = max_in_window(releases, 1.0 + jitter)
    if busiest_arrivals > widened:
        problems.append(
            f"the server counted {busiest_arrivals} requests in one second, more than the {widened} "
            f"released in any {1.0 + jitter:g} s"
        )
    return problems


class ReleaseLog:
    """Every release of the shared budget ``key``, read from Redis while a run goes.

    A release is a member of the budget's window (a sorted set scored with the Redis server's
    time, in microseconds, at which ``acquire`` let the request go); the set keeps the last second
    only, so a thread reads it every :data:`POLL_SECONDS` and keeps every member it sees.
    """

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.window = redis_keys(key)[2]
        self._seen: dict[bytes, int] = {}
        self._read_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="release-log", daemon=True)

    def __enter__(self) -> ReleaseLog:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._read()

    def _read(self) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.time()
        pipe.zrange(self.window, 0, -1, withscores=True)
        (seconds, micros), members = pipe.execute()
        self._read_at.append(seconds + micros / 1e6)
        for member, score in members:
            self._seen[member] = int(score)

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._read()

    @property
    def releases(self) -> list[float]:
        """Release times, oldest first, in seconds of the Redis server's (wall) clock."""
        return sorted(score / 1e6 for score in self._seen.values())

    @property
    def longest_gap(self) -> float:
        """Longest time between two reads (Redis clock): under :data:`MAX_READ_GAP`, none was missed."""
        reads = self._read_at
        return max((b - a for a, b in pairwise(reads)), default=0.0)
