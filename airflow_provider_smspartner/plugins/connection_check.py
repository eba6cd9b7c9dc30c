"""An API-server plugin that makes the UI's **Test** button work for ``smspartner`` connections.

Airflow 3.3's UI posts ``port: Number(connection.port)`` from its Test button, which is ``0`` for
a connection saved without a port (an ``smspartner`` connection never needs one: the port, if
any, is part of the API base URL). The API server compares that ``0`` with the stored NULL, takes
it for another destination and answers 400 "The host or port to test differs from the stored
connection" (fixed in Airflow 3.4 by apache/airflow#73298). :class:`ConnectionTestPortFix`, a
root middleware of the API server, drops that ``0`` for ``smspartner`` connection tests.

Registered through the ``airflow.plugins`` entry point (``pyproject.toml``): Airflow loads those in
every deployment, while plugins listed in the provider info load only with ``[core]
lazy_discover_providers = False``. The API server is the only process that uses it; no DAG or
task imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow.plugins_manager import AirflowPlugin

#: The route the UI's Test button posts to (behind any ``[api] base_url`` path prefix).
CONNECTION_TEST_PATH = "/api/v2/connections/test"
#: A connection test body is a few hundred bytes; anything larger is passed on untouched.
_MAX_BODY = 1 << 20

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def drop_unset_port(body: bytes) -> bytes:
    """``body`` without ``"port": 0`` when it is a JSON test request for an ``smspartner`` connection.

    No connection addresses port 0 and the hook ignores it, so dropping it changes nothing
    but the comparison (see the module docstring). Any other body is returned unchanged.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not (isinstance(data, dict) and data.get("conn_type") == "smspartner"):
        return body
    port = data.get("port")
    if not (type(port) is int and port == 0):
        return body
    del data["port"]
    return json.dumps(data).encode()


class ConnectionTestPortFix:
    """ASGI middleware of the API server: applies :func:`drop_unset_port` to connection tests.

    Only ``POST .../api/v2/connections/test`` requests are read (at most 1 MiB, then passed on
    as they came); every other request goes straight to the application.

    :param app: the ASGI application it wraps (Airflow's API server).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path", "").rstrip("/").endswith(CONNECTION_TEST_PATH)
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more and size <= _MAX_BODY:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        if not more:
            body = drop_unset_port(body)
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        pending: list[Message] = [{"type": "http.request", "body": body, "more_body": more}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


class SmsPartnerConnectionTestPlugin(AirflowPlugin):
    """Makes the UI's Test button work for ``smspartner`` connections on Airflow 3.3."""

    name = "smspartner_connection_test"
    fastapi_root_middlewares = [
        {"name": "smspartner_connection_test_port", "middleware": ConnectionTestPortFix}
    ]
