"""HTTP server of the sandbox: answers like the documented SMS Partner stop-list API on loopback.

Endpoints (base path ``/v1``): ``GET stop-sms/list``, ``POST stop-sms/add`` (JSON body),
``GET stop-sms/delete`` and ``GET me``. Only JSON is produced: ``_format=xml`` is accepted and
ignored, because the docs show no XML shape for the stop list and the provider asks for JSON.

Order of processing for every request: count it in the stats and let the rate limiter decide,
both at its arrival (so a ``busiest_second`` at or under ``rate_limit`` means no 429 from the
limiter), wait ``latency``, answer 429 if the limiter refused it, route (404/405), serve a scripted answer if one is queued for the endpoint
(:meth:`SandboxServer.respond`, :meth:`SandboxServer.redirect`), then draw a fault. Scripted
answers and faults come before authentication and before the request is processed, except
``lost_response`` (processed, then the connection is closed without an answer),
``slow``/``truncated_list`` (processed normally, late or cut) and ``trickle`` (processed, then
the body written one byte every ``trickle_seconds``).

Knobs to rehearse answers the provider must refuse (fail closed):

- ``respond(body, status, endpoint=..., count=...)``: any raw body and status, e.g. ``{}``,
  ``{"success": "false"}``, ``{"nbData": null, "data": null}``, invalid UTF-8, deep nesting, a
  401 without a code;
- ``redirect(location, status, endpoint=...)``: a 301/302/303/307/308 to another host;
- the ``trickle`` fault: a body that never times out per read but takes minutes in total.

What the sandbox saw (requests per endpoint, statuses sent including 429s, the busiest sliding
second, faults injected, adds applied) is served as JSON at ``GET /_sandbox/stats`` (outside
``/v1``; not counted, limited or delayed itself; ``POST /_sandbox/stats/reset`` zeroes it) and
written by the CLI's ``--stats-file`` on exit: see :meth:`SandboxStats.as_dict`.

Nothing of a request (request line, query string, API key) is ever written to stdout, stderr or a log.
"""

from __future__ import annotations

import bisect
import contextlib
import ipaddress
import json
import random
import re
import secrets
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from airflow_provider_smspartner.sandbox.faults import (
    ENDPOINTS,
    FaultKind,
    FaultPlan,
    ResponseScript,
    ScriptedResponse,
    normalize_endpoint,
)
from airflow_provider_smspartner.sandbox.state import (
    CODE_ALREADY_PRESENT,
    CODE_INVALID_PHONE,
    CODE_OK,
    CODE_PHONE_REQUIRED,
    StopListState,
)

#: Accepted values of ``error_style``.
ERROR_STYLES: tuple[str, ...] = ("http_4xx", "http_200")

#: Endpoint name used in the stats for paths that are not an API endpoint.
OTHER_ENDPOINT = "other"
#: Where the stats are served (``GET``; ``POST .../reset`` zeroes them): outside ``/v1``.
STATS_PATH = "/_sandbox/stats"

_ROUTES = {f"/v1/{name}": name for name in ENDPOINTS}
_METHODS = {"stop-sms/list": "GET", "stop-sms/add": "POST", "stop-sms/delete": "GET", "me": "GET"}
_MAX_BODY = 1 << 20
_MAX_LINE = 65536
_MAX_HEADERS = 100
_BIG_BODY = 1 << 16
_STATUS_4XX = {1: 401, 10: 401, 4: 404}
_INTEGER = re.compile(r"[+-]?[0-9]+")

_MSG_KEY_REQUIRED = "API key is required"
_MSG_KEY_INVALID = "Invalid API key"
_ADD_MESSAGES = {
    CODE_PHONE_REQUIRED: "Phone number is required",
    CODE_ALREADY_PRESENT: "Number is already in stop list",
    CODE_INVALID_PHONE: "Invalid phone number",
}

_HTML_500 = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
_HTML_502 = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
_MALFORMED_BODY = b'{"success": tru'
_OK_BODY = b'{"success":true,"code":200}'
_ME_BODY = json.dumps(
    {
        "success": True,
        "code": 200,
        "user": {"username": "sandbox@example.com"},
        "credits": {
            "creditSms": 1000,
            "creditSmsECO": 0,
            "creditHlr": 0,
            "toSend": 0,
            "balance": "10.000",
            "currency": "EUR",
        },
    },
    separators=(",", ":"),
).encode()


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


class _RateLimiter:
    """Sliding one-second window over the requests that were let through."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accepted: deque[float] = deque()

    def allow(self, limit: float | None, now: float) -> bool:
        if not limit:
            return True
        with self._lock:
            cutoff = now - 1.0
            while self._accepted and self._accepted[0] <= cutoff:
                self._accepted.popleft()
            if len(self._accepted) >= limit:
                return False
            self._accepted.append(now)
            return True

    def reset(self) -> None:
        with self._lock:
            self._accepted.clear()


class _SandboxHandler(BaseHTTPRequestHandler):
    """One keep-alive connection; writes each response in as few ``send`` calls as possible."""

    protocol_version = "HTTP/1.1"
    server_version = "smspartner-sandbox"
    # Headers and a large body go out in two writes: without TCP_NODELAY, Nagle's algorithm and
    # delayed ACKs would add ~40 ms to such responses.
    disable_nagle_algorithm = True
    server: _SandboxHTTPServer
    _request_headers: dict[str, str]

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log: the request line carries the API key."""

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def handle_one_request(self) -> None:
        """Read one request and answer it.

        Replaces the stdlib version, whose ``email``-based header parser costs more than all the
        rest of a request here; only what the sandbox needs is parsed.
        """
        try:
            line = self.rfile.readline(_MAX_LINE + 1)
            if not line:
                self.close_connection = True
                return
            parts = line.split()
            if len(line) > _MAX_LINE or len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
                self._reject(400, "Bad request line")
                return
            method, target, version = (part.decode("latin-1") for part in parts)
            self.command, self.path, self.request_version = method, target, version
            self.requestline = ""  # never kept: it holds the API key of GET requests
            headers = self._read_headers()
            if headers is None:
                self._reject(431, "Request header fields too large")
                return
            self._request_headers = headers
            connection = headers.get("connection", "").lower()
            if version == "HTTP/1.0":
                self.close_connection = connection != "keep-alive"
            else:
                self.close_connection = connection == "close"
            if method == "HEAD":
                # A HEAD answer carries no body; simpler to close than to special-case every reply.
                self.close_connection = True
            if headers.get("expect", "").lower() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._handle(method)
        except TimeoutError:
            self.close_connection = True

    def _read_headers(self) -> dict[str, str] | None:
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            line = self.rfile.readline(_MAX_LINE + 1)
            if line in (b"\r\n", b"\n", b""):
                return headers
            if len(line) > _MAX_LINE:
                return None
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        return None

    def _reject(self, status: int, message: str) -> None:
        self.close_connection = True
        self._send(status, _json({"success": False, "code": status, "message": message}))

    # -- request flow --------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        sandbox = self.server.sandbox
        path, _, query = self.path.partition("?")
        if path.startswith(STATS_PATH):
            self._stats_endpoint(method, path.rstrip("/"))
            return
        endpoint = _ROUTES.get(path.rstrip("/"))
        arrived = time.monotonic()
        sandbox.stats._record_request(endpoint or OTHER_ENDPOINT, arrived)
        # Decided on arrival, as a server's limiter does (not after the latency, whose wake-up
        # jitter would bunch requests up that arrived evenly spaced).
        allowed_by_limiter = sandbox._limiter.allow(sandbox.rate_limit, arrived)
        raw = self._read_body()
        if raw is None:
            return
        if sandbox.latency > 0:
            sandbox._pause(sandbox.latency)
        if not allowed_by_limiter:
            self._send_too_many()
            return
        if endpoint is None:
            self._send(404, _json({"success": False, "code": 404, "message": "Not found"}))
            return
        allowed = _METHODS[endpoint]
        if method != allowed:
            body = _json({"success": False, "code": 405, "message": "Method not allowed"})
            self._send(405, body, headers=(("Allow", allowed),))
            return

        scripted = sandbox.responses.next_response(endpoint)
        if scripted is not None:
            sandbox.stats._record_scripted()
            self._send(scripted.status, scripted.body, scripted.content_type, scripted.headers)
            return

        fault = sandbox.faults.next_fault(endpoint)
        if fault is not None:
            sandbox.stats._record_fault(fault)
            if self._apply_early_fault(fault):
                return
            if fault is FaultKind.SLOW:
                sandbox._pause(sandbox.slow_seconds)

        try:
            status, body = self._dispatch(endpoint, query, raw, fault is FaultKind.TRUNCATED_LIST)
        except Exception as exc:
            # Report the failure without the exception message, which could quote request data.
            _report_error(exc)
            status, body = 500, _json({"success": False, "code": 500, "message": "Sandbox internal error"})
        if fault is FaultKind.LOST_RESPONSE:
            self._drop()
            return
        self._send(status, body, trickle=fault is FaultKind.TRICKLE)

    def _stats_endpoint(self, method: str, path: str) -> None:
        """``GET /_sandbox/stats`` (the JSON summary) and ``POST /_sandbox/stats/reset``.

        Outside ``/v1`` and outside the stats: no latency, limit, fault or key applies.
        """
        sandbox = self.server.sandbox
        if self._read_body() is None:
            return
        if path == STATS_PATH and method == "GET":
            self._send(200, _json(sandbox.stats.as_dict()), record=False)
        elif path == f"{STATS_PATH}/reset" and method == "POST":
            sandbox.reset_stats()
            self._send(200, _json({"reset": True}), record=False)
        else:
            body = _json({"success": False, "code": 404, "message": "Not found"})
            self._send(404, body, record=False)

    def _apply_early_fault(self, fault: FaultKind) -> bool:
        """Answer for a fault that replaces processing; return whether one was applied."""
        if fault is FaultKind.DROP:
            self._drop()
        elif fault is FaultKind.SERVER_ERROR:
            self._send(500, _HTML_500, content_type="text/html")
        elif fault is FaultKind.BAD_GATEWAY:
            self._send(502, _HTML_502, content_type="text/html")
        elif fault is FaultKind.MALFORMED:
            self._send(200, _MALFORMED_BODY)
        elif fault is FaultKind.RATE_LIMIT:
            self._send_too_many()
        else:
            return False
        return True

    def _dispatch(self, endpoint: str, query: str, raw: bytes, truncated: bool) -> tuple[int, bytes]:
        sandbox = self.server.sandbox
        if endpoint == "stop-sms/add":
            return self._add(raw)
        params = parse_qs(query, keep_blank_values=True)
        denied = self._check_key(params.get("apiKey", [""])[0])
        if denied:
            return denied
        if endpoint == "stop-sms/list":
            return 200, sandbox.state.list_body(truncated=truncated)
        if endpoint == "me":
            return 200, _ME_BODY
        # stop-sms/delete
        raw_id = params.get("id", [""])[0].strip()
        if not _INTEGER.fullmatch(raw_id):
            return self._error(3, "Number ID is required")
        if not sandbox.state.remove(int(raw_id)):
            return self._error(4, "Number ID cannot be found")
        return 200, _OK_BODY

    def _add(self, raw: bytes) -> tuple[int, bytes]:
        sandbox = self.server.sandbox
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return self._error(90, "Invalid JSON body")
        denied = self._check_key(payload.get("apiKey"))
        if denied:
            return denied
        # Only the documented singular key; "phoneNumbers" (two doc tabs) is not accepted.
        code, stop_id = sandbox.state.add(payload.get("phoneNumber"))
        if code != CODE_OK:
            return self._error(code, _ADD_MESSAGES[code])
        sandbox.stats._record_add()
        return 200, _json({"success": True, "code": 200, "stopId": stop_id})

    def _check_key(self, key: object) -> tuple[int, bytes] | None:
        if key is None or key == "":
            return self._error(1, _MSG_KEY_REQUIRED)
        expected = self.server.sandbox.api_key
        if not isinstance(key, str) or not secrets.compare_digest(key.encode(), expected.encode()):
            return self._error(10, _MSG_KEY_INVALID)
        return None

    def _error(self, code: int, message: str) -> tuple[int, bytes]:
        if code == 90:
            status = 400
        elif self.server.sandbox.error_style == "http_200":
            status = 200
        else:
            status = _STATUS_4XX.get(code, 400)
        return status, _json({"success": False, "code": code, "message": message})

    # -- I/O -----------------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """Read the request body (to keep the connection in sync); ``None`` if already answered."""
        encoding = self._request_headers.get("transfer-encoding")
        if encoding and encoding.lower() != "identity":
            self._reject(411, "Content-Length required")
            return None
        length_header = self._request_headers.get("content-length")
        if not length_header:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self._reject(413, "Bad request body size")
            return None
        return self.rfile.read(length)

    def _send_too_many(self) -> None:
        body = _json({"success": False, "code": 429, "message": "Too many requests"})
        self._send(429, body, headers=(("Retry-After", str(self.server.sandbox.retry_after)),))

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
        trickle: bool = False,
        record: bool = True,
    ) -> None:
        reason = self.responses.get(status, ("",))[0]
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Server: {self.server_version}",
            f"Content-Type: {content_type}; charset=utf-8",
            f"Content-Length: {len(body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if record:
            self.server.sandbox.stats._record_status(status)
        if trickle:
            self._trickle(head, body)
            return
        try:
            if len(body) <= _BIG_BODY:
                self.wfile.write(head + body)
            else:
                # Avoid copying a large list body just to prepend the headers.
                self.wfile.write(head)
                self.wfile.write(body)
        except OSError:
            # The client went away (e.g. it timed out on a slow fault): nothing left to do.
            self.close_connection = True

    def _trickle(self, head: bytes, body: bytes) -> None:
        """Write the headers, then the body one byte every ``trickle_seconds``; stop if either side goes."""
        sandbox = self.server.sandbox
        self.close_connection = True
        try:
            self.wfile.write(head)
            for index in range(len(body)):
                sandbox._pause(sandbox.trickle_seconds)
                if sandbox._stopping.is_set():
                    return
                self.wfile.write(body[index : index + 1])
        except OSError:
            return

    def _drop(self) -> None:
        # Closing without a byte written: the server shuts the socket down after this handler.
        self.close_connection = True


def _report_error(exc: BaseException) -> None:
    sys.stderr.write(
        "smspartner sandbox: internal error while handling a request "
        f"({type(exc).__name__}):\n{''.join(traceback.format_tb(exc.__traceback__))}"
    )
    sys.stderr.flush()


class _SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _SandboxHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name with getfqdn, a DNS call we do not need.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down idle keep-alive connections so their handler threads end with the server."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is None or isinstance(exc, (ConnectionError, TimeoutError)):
            return
        _report_error(exc)


class _SandboxHTTPServer6(_SandboxHTTPServer):
    address_family = socket.AF_INET6


class SandboxServer:
    """A local emulator of the SMS Partner stop-list API, served from a daemon thread.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with SandboxServer(seed_stops=100) as sandbox:
            requests.get(f"{sandbox.base_url}/stop-sms/list", params={"apiKey": sandbox.api_key})

    :param api_key: the only accepted API key.
    :param host: address to bind; must be loopback unless ``allow_remote`` is true.
    :param port: TCP port, 0 to pick a free one (kept across a stop/start).
    :param seed_stops: number of random distinct French mobile numbers to put on the list first
        (ids 1..N, created over the past 3 years, the same numbers for the same ``seed``).
    :param stops: explicit numbers to add after those, each an E.164 string or a
        ``(phone, created_at_utc)`` pair.
    :param latency: seconds added to every response.
    :param rate_limit: requests accepted per sliding second, ``None``/0 for no limit; requests over
        it get HTTP 429 with ``Retry-After``.
    :param error_style: ``"http_4xx"`` (API errors as 400/401/404) or ``"http_200"`` (API errors as
        HTTP 200 with ``success: false``; malformed JSON stays 400).
    :param fault_rates: random probability per request for each fault kind, e.g. ``{"drop": 0.05}``.
    :param fault_endpoints: endpoints random and endpoint-less queued faults apply to; ``None`` = all.
    :param seed: seed of the number generator and of the fault draws.
    :param slow_seconds: delay of the ``slow`` fault.
    :param retry_after: value of the ``Retry-After`` header on 429 responses.
    :param trickle_seconds: pause between two bytes of a ``trickle`` fault's response.
    :param allow_remote: allow a non-loopback ``host`` (the sandbox has no real security).
    :raises ValueError: on a non-loopback host without ``allow_remote`` or an invalid setting.
    """

    def __init__(
        self,
        api_key: str = "sandbox-key",
        host: str = "127.0.0.1",
        port: int = 0,
        seed_stops: int = 0,
        stops: Iterable[str | tuple[str, datetime]] | None = None,
        latency: float = 0.0,
        rate_limit: float | None = None,
        error_style: str = "http_4xx",
        fault_rates: Mapping[str | FaultKind, float] | None = None,
        fault_endpoints: Iterable[str] | None = None,
        seed: int = 0,
        *,
        slow_seconds: float = 3.0,
        retry_after: str = "1",
        trickle_seconds: float = 0.5,
        allow_remote: bool = False,
    ) -> None:
        if not allow_remote and not is_loopback_host(host):
            raise ValueError(
                f"Refusing to serve the sandbox on non-loopback host {host!r} (allow_remote=False)"
            )
        if not api_key:
            raise ValueError("The sandbox needs a non-empty api_key")
        self.api_key = api_key
        self.host = host
        self._port = port
        self.latency = latency
        self.rate_limit = rate_limit
        self.error_style = error_style
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self.trickle_seconds = trickle_seconds
        self.seed = seed
        self.state = StopListState()
        self.faults = FaultPlan(fault_rates, fault_endpoints, seed=seed)
        self.responses = ResponseScript()
        self._stats = SandboxStats()
        self._limiter = _RateLimiter()
        self._stopping = threading.Event()
        self._httpd: _SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        if seed_stops:
            self.state.seed_random(seed_stops, random.Random(seed))
        if stops is not None:
            self.state.seed_numbers(stops)

    # -- settings that may change while serving --------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds added to every response."""
        return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"latency must be >= 0, got {value}")
        self._latency = float(value)

    @property
    def trickle_seconds(self) -> float:
        """Pause between two bytes of a ``trickle`` fault's response."""
        return self._trickle_seconds

    @trickle_seconds.setter
    def trickle_seconds(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"trickle_seconds must be > 0, got {value}")
        self._trickle_seconds = float(value)

    @property
    def rate_limit(self) -> float | None:
        """Requests accepted per sliding second, or ``None`` for no limit."""
        return self._rate_limit

    @rate_limit.setter
    def rate_limit(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise ValueError(f"rate_limit must be >= 0 or None, got {value}")
        self._rate_limit = value or None

    @property
    def error_style(self) -> str:
        """``"http_4xx"`` or ``"http_200"``."""
        return self._error_style

    @error_style.setter
    def error_style(self, value: str) -> None:
        if value not in ERROR_STYLES:
            raise ValueError(f"error_style must be one of {ERROR_STYLES}, got {value!r}")
        self._error_style = value

    @property
    def fault_rates(self) -> dict[str, float]:
        """Random fault probabilities per request (see :class:`FaultPlan`)."""
        return self.faults.rates

    @fault_rates.setter
    def fault_rates(self, rates: Mapping[str | FaultKind, float] | None) -> None:
        self.faults.rates = rates  # type: ignore[assignment]

    @property
    def fault_endpoints(self) -> frozenset[str] | None:
        """Endpoints random faults apply to, ``None`` = all."""
        return self.faults.endpoints

    @fault_endpoints.setter
    def fault_endpoints(self, endpoints: Iterable[str] | None) -> None:
        self.faults.endpoints = endpoints  # type: ignore[assignment]

    # -- faults and stats --------------------------------------------------------------------

    def inject(
        self, kind: str | FaultKind, count: int = 1, endpoint: str | None = None, after: int = 0
    ) -> None:
        """Queue ``count`` one-shot faults of ``kind`` for the next requests on ``endpoint``
        (``None`` = any endpoint), once ``after`` of them went through: ``inject("rate_limit",
        endpoint="stop-sms/add", after=20)`` answers the 21st add with a 429, mid-run. Queued
        faults are used before any random draw.

        :raises ValueError: on an unknown fault kind or endpoint, or a negative ``after``.
        """
        self.faults.inject(kind, count=count, endpoint=endpoint, after=after)

    def pending_faults(self) -> list[tuple[str, str | None]]:
        """Queued faults not consumed yet, as ``(kind, endpoint)``."""
        return self.faults.pending()

    def respond(
        self,
        body: bytes | str,
        status: int = 200,
        *,
        endpoint: str | None = None,
        count: int | None = 1,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Answer the next ``count`` requests on ``endpoint`` with this raw body and status.

        The answer replaces everything else (authentication, processing, faults), so any body can
        be rehearsed: ``respond("{}")``, ``respond('{"success":"false","code":200}')``,
        ``respond(b"\\xff", endpoint="stop-sms/list")``, ``respond("", 401)``...

        :param body: Sent byte for byte; ``str`` is encoded as UTF-8.
        :param status: HTTP status, 200-599.
        :param endpoint: ``None`` = any endpoint.
        :param count: Requests to answer; ``None`` = every matching request until
            :meth:`clear_responses`.
        :param headers: Extra response headers (not Content-Length or Content-Type).
        :param content_type: The ``Content-Type`` (``; charset=utf-8`` is appended).
        :raises ValueError: on an invalid status, header, endpoint or count.
        """
        pairs = tuple(headers.items() if isinstance(headers, Mapping) else headers or ())
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.responses.add(ScriptedResponse(status, data, pairs, content_type), endpoint, count)

    def redirect(
        self, location: str, status: int = 302, *, endpoint: str | None = None, count: int | None = 1
    ) -> None:
        """Answer the next ``count`` requests on ``endpoint`` with a redirect to ``location``.

        A client that follows it sends the request, API key included, to ``location``.

        :param status: 301, 302, 303, 307 or 308 (any 3xx is accepted).
        :raises ValueError: on a status outside 300-399 or an invalid location.
        """
        if isinstance(status, bool) or not isinstance(status, int) or not 300 <= status <= 399:
            raise ValueError(f"a redirect status is 300-399, got {status!r}")
        body = _json({"success": False, "code": status, "message": "Moved"})
        self.respond(body, status, endpoint=endpoint, count=count, headers=(("Location", location),))

    def pending_responses(self) -> list[tuple[int, str | None, int | None]]:
        """Scripted answers not used up yet, as ``(status, endpoint, remaining count or None)``."""
        return self.responses.pending()

    def clear_responses(self) -> None:
        """Drop every scripted answer."""
        self.responses.clear()

    @property
    def stats(self) -> SandboxStats:
        """Request counters (see :class:`SandboxStats`)."""
        return self._stats

    def reset_stats(self) -> None:
        """Zero the counters and the rate limiter window."""
        self._stats.reset()
        self._limiter.reset()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (only known for ``port=0`` once started)."""
        if self._port == 0:
            raise RuntimeError("The sandbox has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, the value for the connection's host."""
        return f"{self.url}/v1"

    @property
    def stats_url(self) -> str:
        """``http://HOST:PORT/_sandbox/stats``: the JSON of :meth:`SandboxStats.as_dict`."""
        return f"{self.url}{STATS_PATH}"

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._httpd is not None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SandboxServer:
        """Bind and serve from a daemon thread; no-op if already running. Returns ``self``."""
        with self._lifecycle:
            if self._httpd is not None:
                return self
            self._stopping.clear()
            server_class = _SandboxHTTPServer6 if ":" in self.host else _SandboxHTTPServer
            httpd = server_class((self.host.strip("[]"), self._port), self)
            self._port = int(httpd.server_address[1])
            thread = threading.Thread(
                target=httpd.serve_forever,
                # Short poll interval: stop() waits for the loop to notice, which matters in test teardowns.
                kwargs={"poll_interval": 0.02},
                name=f"smspartner-sandbox-{self._port}",
                daemon=True,
            )
            thread.start()
            self._httpd, self._thread = httpd, thread
            return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and open connections; idempotent."""
        with self._lifecycle:
            httpd, thread = self._httpd, self._thread
            if httpd is None:
                return
            # Wakes handlers sleeping in latency/slow faults so they finish promptly.
            self._stopping.set()
            httpd.shutdown()
            httpd.server_close()
            httpd.close_connections()
            if thread is not None:
                thread.join(timeout=5)
            self._httpd, self._thread = None, None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self.running else "stopped"
        return f"<SandboxServer {where} stops={len(self.state)}>"

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)
