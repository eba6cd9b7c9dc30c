"""The sandbox server: :class:`SandboxServer`, its settings and knobs, addresses and lifecycle.

Endpoints (base path ``/v1``): ``GET stop-sms/list``, ``POST stop-sms/add`` (JSON body),
``GET stop-sms/delete`` and ``GET me``. The rooms: the HTTP plumbing and the order in which a
request is processed in :mod:`.handler`, the API's answers in :mod:`.endpoints`, the stop list in
:mod:`.state`, faults and scripted answers in :mod:`.faults`, what the sandbox saw in :mod:`.stats`.

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
"""

from __future__ import annotations

import ipaddress
import random
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import TracebackType

from airflow_provider_smspartner.sandbox.endpoints import ERROR_STYLES, json_body
from airflow_provider_smspartner.sandbox.faults import FaultKind, FaultPlan, ResponseScript, ScriptedResponse
from airflow_provider_smspartner.sandbox.handler import RateLimiter, SandboxHTTPServer, SandboxHTTPServer6
from airflow_provider_smspartner.sandbox.state import StopListState
from airflow_provider_smspartner.sandbox.stats import STATS_PATH, SandboxStats


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
        self._limiter = RateLimiter()
        self._stopping = threading.Event()
        self._httpd: SandboxHTTPServer | None = None
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
        body = json_body({"success": False, "code": status, "message": "Moved"})
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
            server_class = SandboxHTTPServer6 if ":" in self.host else SandboxHTTPServer
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
