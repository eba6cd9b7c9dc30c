"""HTTP plumbing of the sandbox: a threading HTTP server and its keep-alive request handler.

Order of processing for every request: count it in the stats and let the rate limiter decide,
both at its arrival (so a ``busiest_second`` at or under ``rate_limit`` means no 429 from the
limiter), wait ``latency``, answer 429 if the limiter refused it, route (404/405), serve a scripted
answer if one is queued for the endpoint (``SandboxServer.respond``, ``SandboxServer.redirect``),
then draw a fault; then the API's answer (:mod:`.endpoints`). Scripted answers and faults come
before authentication and before the request is processed, except ``lost_response`` (processed,
then the connection is closed without an answer), ``slow``/``truncated_list`` (processed
normally, late or cut) and ``trickle`` (processed, then the body written one byte every
``trickle_seconds``).

``GET /_sandbox/stats`` and ``POST /_sandbox/stats/reset`` are answered outside that flow: no
latency, limit, fault or key applies, and they are not counted.

Nothing of a request (request line, query string, API key) is ever written to stdout, stderr or a log.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from airflow_provider_smspartner.sandbox.endpoints import METHODS, ApiSandbox, answer, json_body, route
from airflow_provider_smspartner.sandbox.faults import CANNED_ANSWERS, FaultKind, FaultPlan, ResponseScript
from airflow_provider_smspartner.sandbox.stats import OTHER_ENDPOINT, STATS_PATH

_MAX_BODY = 1 << 20
_MAX_LINE = 65536
_MAX_HEADERS = 100
_BIG_BODY = 1 << 16


class RateLimiter:
    """Sliding one-second window over the requests that were let through."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accepted: deque[float] = deque()

    def allow(self, limit: float | None, now: float) -> bool:
        """Whether a request arriving at monotonic time ``now`` is under ``limit`` per second."""
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
        """Forget the requests let through."""
        with self._lock:
            self._accepted.clear()


class ServedSandbox(ApiSandbox, Protocol):
    """What the handler reads of the sandbox it serves (a ``SandboxServer``, whose module imports
    this one: a protocol keeps the dependency one way)."""

    faults: FaultPlan
    responses: ResponseScript
    slow_seconds: float
    retry_after: str
    _limiter: RateLimiter
    _stopping: threading.Event

    @property
    def latency(self) -> float: ...

    @property
    def rate_limit(self) -> float | None: ...

    @property
    def trickle_seconds(self) -> float: ...

    def reset_stats(self) -> None: ...

    def _pause(self, seconds: float) -> None: ...


class SandboxHandler(BaseHTTPRequestHandler):
    """One keep-alive connection; writes each response in as few ``send`` calls as possible."""

    protocol_version = "HTTP/1.1"
    server_version = "smspartner-sandbox"
    # Headers and a large body go out in two writes: without TCP_NODELAY, Nagle's algorithm and
    # delayed ACKs would add ~40 ms to such responses.
    disable_nagle_algorithm = True
    server: SandboxHTTPServer
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
        self._send(status, json_body({"success": False, "code": status, "message": message}))

    # -- request flow --------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        sandbox = self.server.sandbox
        path, _, query = self.path.partition("?")
        if path.startswith(STATS_PATH):
            self._stats_endpoint(method, path.rstrip("/"))
            return
        endpoint = route(path)
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
        elif endpoint is None:
            self._send(404, json_body({"success": False, "code": 404, "message": "Not found"}))
        elif method != METHODS[endpoint]:
            body = json_body({"success": False, "code": 405, "message": "Method not allowed"})
            self._send(405, body, headers=(("Allow", METHODS[endpoint]),))
        else:
            self._serve(endpoint, query, raw)

    def _serve(self, endpoint: str, query: str, raw: bytes) -> None:
        """A routed request: its scripted answer if one is queued, else a fault, else the API's answer."""
        sandbox = self.server.sandbox
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
            status, body = answer(sandbox, endpoint, query, raw, fault is FaultKind.TRUNCATED_LIST)
        except Exception as exc:
            # Report the failure without the exception message, which could quote request data.
            _report_error(exc)
            status, body = (
                500,
                json_body({"success": False, "code": 500, "message": "Sandbox internal error"}),
            )
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
            self._send(200, json_body(sandbox.stats.as_dict()), record=False)
        elif path == f"{STATS_PATH}/reset" and method == "POST":
            sandbox.reset_stats()
            self._send(200, json_body({"reset": True}), record=False)
        else:
            body = json_body({"success": False, "code": 404, "message": "Not found"})
            self._send(404, body, record=False)

    def _apply_early_fault(self, fault: FaultKind) -> bool:
        """Answer for a fault that replaces processing; return whether one was applied."""
        if fault is FaultKind.DROP:
            self._drop()
        elif fault is FaultKind.RATE_LIMIT:
            self._send_too_many()
        elif fault in CANNED_ANSWERS:
            status, body, content_type = CANNED_ANSWERS[fault]
            self._send(status, body, content_type=content_type)
        else:
            return False
        return True

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
        body = json_body({"success": False, "code": 429, "message": "Too many requests"})
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


class SandboxHTTPServer(ThreadingHTTPServer):
    """The threading HTTP server of one sandbox (IPv4); tracks its open connections,
    so that stopping the sandbox also ends the idle keep-alive ones."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: ServedSandbox) -> None:
        self.sandbox = sandbox
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, SandboxHandler)

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


class SandboxHTTPServer6(SandboxHTTPServer):
    """:class:`SandboxHTTPServer` on IPv6."""

    address_family = socket.AF_INET6
