"""What the sandbox saw: request counters, statuses, faults, the busiest sliding second.

Served as JSON at ``GET /_sandbox/stats`` (outside ``/v1``; not counted, limited or delayed
itself; ``POST /_sandbox/stats/reset`` zeroes it) and written by the CLI's ``--stats-file`` on
exit: see :meth:`SandboxStats.as_dict`.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, deque
from typing import Any

from airflow_provider_smspartner.sandbox.faults import FaultKind, normalize_endpoint

#: Endpoint name used in the stats for paths that are not an API endpoint.
OTHER_ENDPOINT = "other"
#: Where the stats are served (``GET``; ``POST .../reset`` zeroes them): outside ``/v1``.
STATS_PATH = "/_sandbox/stats"


class _BusiestSecond:
    """The most events seen in any sliding one-second window (``(t - 1, t]``), kept as they come."""

    def __init__(self) -> None:
        self.recent: deque[float] = deque()
        self.busiest = 0

    def add(self, now: float) -> None:
        if self.recent and now < self.recent[-1]:
            # Stamped by another thread a hair earlier than the last one recorded: keep the order.
            bisect.insort(self.recent, now)
            now = self.recent[-1]
        else:
            self.recent.append(now)
        cutoff = now - 1.0
        while self.recent[0] <= cutoff:
            self.recent.popleft()
        self.busiest = max(self.busiest, len(self.recent))


class SandboxStats:
    """Thread-safe counters of what the sandbox received and sent.

    Attributes read as copies, so they can be inspected while requests are being served:
    ``total``, ``by_endpoint`` (``Counter``: endpoint name -> requests received, ``"other"`` for
    unknown paths), ``by_status`` (``Counter``: HTTP status -> responses sent; dropped connections
    send none), ``by_fault`` (``Counter``: fault name -> faults applied), ``adds_applied`` (adds that
    changed the list, ``lost_response`` ones included), ``rate_limited`` (429s sent, by the limiter
    or a fault), ``scripted`` (scripted answers served), ``busiest_second`` (the most requests
    received in any sliding one-second window, 429s included) and ``timestamps``
    (``(time.monotonic(), endpoint)`` per request received, the newest ``max_timestamps`` kept).

    :meth:`as_dict` is the JSON summary served at ``GET /_sandbox/stats`` and written by the CLI's
    ``--stats-file``.
    """

    def __init__(self, max_timestamps: int = 1_000_000) -> None:
        self._lock = threading.Lock()
        self._max_timestamps = max_timestamps
        self._total = 0
        self._by_endpoint: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._by_fault: Counter[str] = Counter()
        self._adds_applied = 0
        self._rate_limited = 0
        self._scripted = 0
        self._timestamps: deque[tuple[float, str]] = deque(maxlen=max_timestamps)
        self._busiest = _BusiestSecond()
        self._busiest_by_endpoint: dict[str, _BusiestSecond] = {}
        self._first_last: dict[str, list[float]] = {}

    @property
    def total(self) -> int:
        """Requests received."""
        with self._lock:
            return self._total

    @property
    def by_endpoint(self) -> Counter[str]:
        """Requests received per endpoint name."""
        with self._lock:
            return Counter(self._by_endpoint)

    @property
    def by_status(self) -> Counter[int]:
        """Responses sent per HTTP status."""
        with self._lock:
            return Counter(self._by_status)

    @property
    def by_fault(self) -> Counter[str]:
        """Faults applied per fault name."""
        with self._lock:
            return Counter(self._by_fault)

    @property
    def adds_applied(self) -> int:
        """Successful adds that changed the stop list (including ``lost_response`` ones)."""
        with self._lock:
            return self._adds_applied

    @property
    def rate_limited(self) -> int:
        """HTTP 429 responses sent (rate limiter or ``rate_limit`` fault)."""
        with self._lock:
            return self._rate_limited

    @property
    def scripted(self) -> int:
        """Scripted answers served (``respond`` / ``redirect``)."""
        with self._lock:
            return self._scripted

    @property
    def busiest_second(self) -> int:
        """The most requests received in any sliding one-second window (429s included)."""
        with self._lock:
            return self._busiest.busiest

    @property
    def timestamps(self) -> list[tuple[float, str]]:
        """``(time.monotonic(), endpoint)`` for every request received, oldest first."""
        with self._lock:
            return list(self._timestamps)

    def count(self, endpoint: str | None = None, since: float | None = None) -> int:
        """Requests received, optionally only on ``endpoint`` and at or after monotonic time ``since``."""
        name = None
        if endpoint is not None:
            name = endpoint if endpoint == OTHER_ENDPOINT else normalize_endpoint(endpoint)
        with self._lock:
            if since is None:
                return self._total if name is None else self._by_endpoint[name]
            return sum(1 for t, e in self._timestamps if t >= since and (name is None or e == name))

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._total = 0
            self._by_endpoint.clear()
            self._by_status.clear()
            self._by_fault.clear()
            self._adds_applied = 0
            self._rate_limited = 0
            self._scripted = 0
            self._timestamps.clear()
            self._busiest = _BusiestSecond()
            self._busiest_by_endpoint.clear()
            self._first_last.clear()

    def as_dict(self) -> dict[str, Any]:
        """The JSON summary (no timestamps), as served at ``GET /_sandbox/stats``.

        Keys: ``requests_total``; ``requests_by_endpoint`` (endpoint name -> requests received,
        ``"other"`` for unknown paths); ``status_counts`` (HTTP status as a string -> responses
        sent); ``rate_limited`` (429s sent); ``busiest_second`` (most requests received in any
        sliding one-second window, 429s included) and ``busiest_second_by_endpoint``;
        ``active_seconds_by_endpoint`` (seconds from the first to the last request received on
        the endpoint, for rates); ``faults`` (fault name -> faults injected); ``scripted``
        (scripted answers served); ``adds_applied`` (adds that changed the list).
        """
        with self._lock:
            return {
                "requests_total": self._total,
                "requests_by_endpoint": dict(self._by_endpoint),
                "status_counts": {str(status): count for status, count in sorted(self._by_status.items())},
                "rate_limited": self._rate_limited,
                "busiest_second": self._busiest.busiest,
                "busiest_second_by_endpoint": {
                    name: window.busiest for name, window in self._busiest_by_endpoint.items()
                },
                "active_seconds_by_endpoint": {
                    name: round(last - first, 6) for name, (first, last) in self._first_last.items()
                },
                "faults": dict(self._by_fault),
                "scripted": self._scripted,
                "adds_applied": self._adds_applied,
            }

    # Recording, called by the request handler.

    def _record_request(self, endpoint: str, now: float) -> None:
        with self._lock:
            self._total += 1
            self._by_endpoint[endpoint] += 1
            self._timestamps.append((now, endpoint))
            self._busiest.add(now)
            window = self._busiest_by_endpoint.get(endpoint)
            if window is None:
                window = self._busiest_by_endpoint[endpoint] = _BusiestSecond()
            window.add(now)
            span = self._first_last.get(endpoint)
            if span is None:
                self._first_last[endpoint] = [now, now]
            else:
                span[1] = now

    def _record_status(self, status: int) -> None:
        with self._lock:
            self._by_status[status] += 1
            if status == 429:
                self._rate_limited += 1

    def _record_fault(self, kind: FaultKind) -> None:
        with self._lock:
            self._by_fault[kind.value] += 1

    def _record_add(self) -> None:
        with self._lock:
            self._adds_applied += 1

    def _record_scripted(self) -> None:
        with self._lock:
            self._scripted += 1
