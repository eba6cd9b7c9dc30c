"""The hook's HTTP transport: a total deadline on every request, and no redirect ever followed.

``requests``' timeout bounds each socket read, not the request; and ``requests`` prepares a
redirect's next request even when told not to follow it. The hook mounts :class:`DeadlineAdapter`
on a :class:`NoRedirectSession` and sets :data:`request_deadline` around each request.
"""

from __future__ import annotations

import http.client
import io
import socket
import time
from contextvars import ContextVar
from typing import Any, cast

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection

# --------------------------------------------------------------------------------- total deadline
# ``requests``' timeout bounds each socket read, not the request: a server that trickles a byte
# every half second holds a call with ``timeout=2`` for as long as it likes. So every socket read
# of a response (status line, headers and body) is also bounded by the time left until the
# request's deadline, which the hook sets here for the thread making the request.
request_deadline: ContextVar[float | None] = ContextVar("smspartner_request_deadline", default=None)


class _DeadlineReader(io.RawIOBase):
    """Reads a socket; each read waits at most until the deadline (and at most the read timeout)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's deadline passed")
        timeout = self._sock.gettimeout()
        self._sock.settimeout(remaining if timeout is None else min(timeout, remaining))
        try:
            return self._raw.readinto(buffer)
        finally:
            self._sock.settimeout(timeout)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineSocket:
    """What ``http.client.HTTPResponse`` is given instead of the socket: it only calls ``makefile``."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineHTTPResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        deadline = request_deadline.get()
        source = sock if deadline is None else cast(socket.socket, _DeadlineSocket(sock, deadline))
        super().__init__(source, *args, **kwargs)


class _DeadlineHTTPConnection(HTTPConnection):
    response_class = _DeadlineHTTPResponse


class _DeadlineHTTPSConnection(HTTPSConnection):
    response_class = _DeadlineHTTPResponse


class _DeadlineHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


_POOL_CLASSES = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class NoRedirectSession(requests.Session):
    """A session that never works out where a redirect points, let alone follows it.

    ``requests`` prepares the next request of a redirect even with ``allow_redirects=False``
    (parsing a ``Location`` a hostile server chose); with no target there is nothing to prepare.
    """

    max_redirects = 0

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None


class DeadlineAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections honour the request deadline (plain and proxied)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOL_CLASSES)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.PoolManager:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # SOCKS managers have connection classes of their own
            manager.pool_classes_by_scheme = dict(_POOL_CLASSES)
        return manager
