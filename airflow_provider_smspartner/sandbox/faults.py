"""Fault injection for the sandbox: queued and random faults, and scripted raw answers.

Faults are decided per request, before the request is processed (authentication included), so a
client sees the same failure whatever it sent. The exceptions are ``lost_response`` (the request
is processed, an add really lands on the stop list, and only then is the connection closed without
an answer: the case a client cannot tell apart from ``drop`` and must survive idempotently),
``slow`` and ``trickle`` (processed, then answered late or a byte at a time).

Scripted answers (:class:`ScriptedResponse`, queued in a :class:`ResponseScript`) go further than
faults: any status, headers and raw body, e.g. ``{}`` with HTTP 200, a redirect to another host,
invalid UTF-8, so a client can rehearse every odd answer the real API, a proxy or an attacker
could send.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

#: Endpoint names, relative to the ``/v1`` base path; used by ``inject``, ``fault_endpoints`` and stats.
ENDPOINTS: tuple[str, ...] = ("stop-sms/list", "stop-sms/add", "stop-sms/delete", "me")


class FaultKind(str, Enum):
    """The failures the sandbox can inject (the value is the string name accepted everywhere)."""

    SERVER_ERROR = "server_error"
    """HTTP 500 with an HTML body, as a crashing backend behind a proxy would answer."""
    BAD_GATEWAY = "bad_gateway"
    """HTTP 502 with an HTML body."""
    DROP = "drop"
    """Close the connection without answering; the request is not applied."""
    LOST_RESPONSE = "lost_response"
    """Apply the request, then close the connection without answering."""
    SLOW = "slow"
    """Wait ``slow_seconds`` before answering normally (client timeout tests)."""
    MALFORMED = "malformed"
    """HTTP 200 whose body is not valid JSON."""
    RATE_LIMIT = "rate_limit"
    """HTTP 429 JSON with a ``Retry-After`` header."""
    TRUNCATED_LIST = "truncated_list"
    """``stop-sms/list`` only: ``nbData`` says N but ``data`` holds N - 1 rows."""
    TRICKLE = "trickle"
    """Answer normally, but write the body one byte every ``trickle_seconds`` (the headers go at
    once): a client whose timeout bounds each read, not the whole call, waits for minutes. The
    request is processed (an add lands) before the first byte goes out."""


#: Every fault name, as plain strings.
FAULT_KINDS: frozenset[str] = frozenset(kind.value for kind in FaultKind)

#: What the faults that answer in place of the API send: ``(status, body, content type)``.
#: (``drop`` sends nothing; ``rate_limit`` sends the sandbox's own 429, with ``Retry-After``.)
CANNED_ANSWERS: dict[FaultKind, tuple[int, bytes, str]] = {
    FaultKind.SERVER_ERROR: (
        500,
        b"<html><body><h1>500 Internal Server Error</h1></body></html>",
        "text/html",
    ),
    FaultKind.BAD_GATEWAY: (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    FaultKind.MALFORMED: (200, b'{"success": tru', "application/json"),
}

# Faults that only make sense on some endpoints; the others apply to every endpoint.
_ONLY_ON: dict[FaultKind, frozenset[str]] = {FaultKind.TRUNCATED_LIST: frozenset({"stop-sms/list"})}


def normalize_endpoint(endpoint: str) -> str:
    """Return the canonical endpoint name (``"stop-sms/add"``) for ``endpoint``.

    Leading/trailing slashes and a ``v1/`` prefix are tolerated, so ``"/v1/stop-sms/add"`` works too.

    :raises ValueError: if the endpoint is not one of :data:`ENDPOINTS`.
    """
    name = endpoint.strip().strip("/")
    if name.startswith("v1/"):
        name = name[3:]
    if name not in ENDPOINTS:
        raise ValueError(f"Unknown sandbox endpoint {endpoint!r}; expected one of {', '.join(ENDPOINTS)}")
    return name


def to_fault_kind(kind: str | FaultKind) -> FaultKind:
    """Return the :class:`FaultKind` named by ``kind``.

    :raises ValueError: if ``kind`` names no fault.
    """
    try:
        return FaultKind(kind)
    except ValueError:
        raise ValueError(
            f"Unknown fault kind {kind!r}; expected one of {', '.join(sorted(FAULT_KINDS))}"
        ) from None


def applies_to(kind: FaultKind, endpoint: str) -> bool:
    """Whether fault ``kind`` can be applied to a request on ``endpoint``."""
    allowed = _ONLY_ON.get(kind)
    return allowed is None or endpoint in allowed


@dataclass(eq=False)
class _Queued:
    """A queued one-shot fault: its kind, its endpoint (``None`` = any), the matching requests it
    still lets through before it applies."""

    kind: FaultKind
    endpoint: str | None
    after: int = 0


class FaultPlan:
    """Thread-safe source of faults: a FIFO queue of one-shot faults, then random per-request rates.

    :param rates: probability per request for each fault kind, e.g. ``{"drop": 0.05}``; the sum
        must not exceed 1.
    :param endpoints: endpoints that random faults and endpoint-less queued faults apply to;
        ``None`` means every endpoint. A queued fault injected for an explicit endpoint always applies.
    :param seed: seed of the RNG used for the random draws, so a single-threaded run is reproducible.
    """

    def __init__(
        self,
        rates: Mapping[str | FaultKind, float] | None = None,
        endpoints: Iterable[str] | None = None,
        seed: int = 0,
    ) -> None:
        self._lock = threading.Lock()
        self._queue: deque[_Queued] = deque()
        self._rng = random.Random(seed)
        self._rates: tuple[tuple[FaultKind, float], ...] = ()
        self._endpoints: frozenset[str] | None = None
        self.rates = rates  # type: ignore[assignment]
        self.endpoints = endpoints  # type: ignore[assignment]

    @property
    def rates(self) -> dict[str, float]:
        """Random fault probabilities per request, by fault name."""
        return {kind.value: rate for kind, rate in self._rates}

    @rates.setter
    def rates(self, rates: Mapping[str | FaultKind, float] | None) -> None:
        parsed: list[tuple[FaultKind, float]] = []
        for name, rate in (rates or {}).items():
            kind = to_fault_kind(name)
            rate = float(rate)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"Fault rate for {kind.value!r} must be between 0 and 1, got {rate}")
            if rate > 0:
                parsed.append((kind, rate))
        if sum(rate for _, rate in parsed) > 1.0 + 1e-9:
            raise ValueError("The fault rates add up to more than 1")
        # Sorted so that a given seed draws the same faults whatever the dict order was.
        parsed.sort(key=lambda item: item[0].value)
        with self._lock:
            self._rates = tuple(parsed)

    @property
    def endpoints(self) -> frozenset[str] | None:
        """Endpoints random faults apply to (``None`` = all)."""
        return self._endpoints

    @endpoints.setter
    def endpoints(self, endpoints: Iterable[str] | None) -> None:
        value = None if endpoints is None else frozenset(normalize_endpoint(e) for e in endpoints)
        with self._lock:
            self._endpoints = value

    def inject(
        self, kind: str | FaultKind, count: int = 1, endpoint: str | None = None, after: int = 0
    ) -> None:
        """Queue ``count`` one-shot faults of ``kind`` for the next matching requests.

        :param endpoint: only requests on this endpoint consume the fault; ``None`` = any endpoint
            (within ``endpoints``, and where the fault makes sense: ``truncated_list`` waits for a list).
        :param after: let this many matching requests through first (faulted by another queued
            fault or not), so a fault lands mid-run at a known request: ``after=20`` faults the 21st.
        :raises ValueError: on an unknown kind or endpoint, a negative count or ``after``, or a
            fault that cannot apply to the given endpoint.
        """
        fault = to_fault_kind(kind)
        target = None if endpoint is None else normalize_endpoint(endpoint)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"after must be a whole number >= 0, got {after!r}")
        if target is not None and not applies_to(fault, target):
            raise ValueError(f"Fault {fault.value!r} cannot apply to endpoint {target!r}")
        with self._lock:
            self._queue.extend(_Queued(fault, target, after) for _ in range(count))

    def pending(self) -> list[tuple[str, str | None]]:
        """Queued faults not consumed yet, in order, as ``(kind, endpoint)``."""
        with self._lock:
            return [(queued.kind.value, queued.endpoint) for queued in self._queue]

    def clear(self) -> None:
        """Drop every queued fault (the random rates are kept)."""
        with self._lock:
            self._queue.clear()

    def next_fault(self, endpoint: str) -> FaultKind | None:
        """Decide the fault for one request on ``endpoint``: a queued one first, else a random draw."""
        with self._lock:
            in_scope = self._endpoints is None or endpoint in self._endpoints
            chosen: _Queued | None = None
            for queued in self._queue:
                if queued.endpoint is None and not in_scope:
                    continue
                if queued.endpoint not in (None, endpoint) or not applies_to(queued.kind, endpoint):
                    continue
                if queued.after > 0:
                    queued.after -= 1  # this request is one of those it lets through
                elif chosen is None:
                    chosen = queued
            if chosen is not None:
                self._queue.remove(chosen)
                return chosen.kind
            if not self._rates or not in_scope:
                return None
            draw = self._rng.random()
            threshold = 0.0
            for kind, rate in self._rates:
                if not applies_to(kind, endpoint):
                    continue
                threshold += rate
                if draw < threshold:
                    return kind
            return None


#: Headers a scripted answer may not set: the sandbox writes them from the body.
_RESERVED_HEADERS = frozenset({"content-length", "content-type", "transfer-encoding", "connection"})


@dataclass(frozen=True)
class ScriptedResponse:
    """A raw answer served instead of processing a request (see ``SandboxServer.respond``).

    :param status: HTTP status, 200-599 (3xx with a ``Location`` header for a redirect).
    :param body: The body, sent byte for byte.
    :param headers: Extra headers, ``(name, value)`` pairs (not Content-Length/-Type).
    :param content_type: The ``Content-Type`` (``; charset=utf-8`` is appended).
    """

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"

    def __post_init__(self) -> None:
        if not isinstance(self.body, bytes):
            raise ValueError(f"body must be bytes or str, got {type(self.body).__name__}")
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 200 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status from 200 to 599, got {self.status!r}")
        headers = tuple((str(name), str(value)) for name, value in self.headers)
        for name, value in (*headers, ("Content-Type", self.content_type)):
            if any(ch in name + value for ch in "\r\n\0") or not name.strip() or ":" in name:
                raise ValueError(f"invalid header {name!r}: {value!r}")
        for name, _ in headers:
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is written by the sandbox itself")
        object.__setattr__(self, "headers", headers)


@dataclass
class _ScriptEntry:
    response: ScriptedResponse
    endpoint: str | None
    remaining: int | None


class ResponseScript:
    """Thread-safe FIFO of scripted answers, each for some requests on one endpoint or on any.

    Entries are matched in the order they were added; an entry with ``count=None`` answers every
    matching request until :meth:`clear`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_ScriptEntry] = []

    def add(self, response: ScriptedResponse, endpoint: str | None = None, count: int | None = 1) -> None:
        """Queue ``response`` for the next ``count`` requests on ``endpoint`` (``None`` = any endpoint).

        :raises ValueError: on an unknown endpoint or a count below 1.
        """
        target = None if endpoint is None else normalize_endpoint(endpoint)
        if count is not None and (isinstance(count, bool) or count < 1):
            raise ValueError(f"count must be >= 1 or None (every request), got {count!r}")
        with self._lock:
            self._entries.append(_ScriptEntry(response, target, count))

    def next_response(self, endpoint: str) -> ScriptedResponse | None:
        """The scripted answer for one request on ``endpoint``, or ``None``."""
        with self._lock:
            for index, entry in enumerate(self._entries):
                if entry.endpoint not in (None, endpoint):
                    continue
                if entry.remaining is not None:
                    entry.remaining -= 1
                    if entry.remaining == 0:
                        del self._entries[index]
                return entry.response
            return None

    def pending(self) -> list[tuple[int, str | None, int | None]]:
        """Queued answers as ``(status, endpoint, remaining count or None)``."""
        with self._lock:
            return [(e.response.status, e.endpoint, e.remaining) for e in self._entries]

    def clear(self) -> None:
        """Drop every scripted answer."""
        with self._lock:
            self._entries.clear()
