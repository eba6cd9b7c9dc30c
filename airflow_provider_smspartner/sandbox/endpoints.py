"""The API's answers: ``stop-sms/list``, ``stop-sms/add``, ``stop-sms/delete`` and ``me``.

Each handler takes a request that was routed and got past the scripted answers and the faults
(see :mod:`.handler`), checks the API key, applies it to the stop list and returns
``(HTTP status, JSON body)``. Only JSON is produced: ``_format=xml`` is accepted and ignored,
because the docs show no XML shape for the stop list and the provider asks for JSON.

API errors are shaped by the sandbox's ``error_style``: ``"http_4xx"`` (400/401/404) or
``"http_200"`` (HTTP 200 with ``success: false``); malformed JSON stays 400 either way.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import parse_qs

from airflow_provider_smspartner.sandbox.faults import ENDPOINTS
from airflow_provider_smspartner.sandbox.state import (
    CODE_ALREADY_PRESENT,
    CODE_INVALID_PHONE,
    CODE_OK,
    CODE_PHONE_REQUIRED,
    StopListState,
)
from airflow_provider_smspartner.sandbox.stats import SandboxStats

#: Accepted values of ``error_style``.
ERROR_STYLES: tuple[str, ...] = ("http_4xx", "http_200")

#: The HTTP method of each endpoint.
METHODS = {"stop-sms/list": "GET", "stop-sms/add": "POST", "stop-sms/delete": "GET", "me": "GET"}

_ROUTES = {f"/v1/{name}": name for name in ENDPOINTS}
_STATUS_4XX = {1: 401, 10: 401, 4: 404}
_INTEGER = re.compile(r"[+-]?[0-9]+")

_MSG_KEY_REQUIRED = "API key is required"
_MSG_KEY_INVALID = "Invalid API key"
_ADD_MESSAGES = {
    CODE_PHONE_REQUIRED: "Phone number is required",
    CODE_ALREADY_PRESENT: "Number is already in stop list",
    CODE_INVALID_PHONE: "Invalid phone number",
}

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

Answer = tuple[int, bytes]


class ApiSandbox(Protocol):
    """What the endpoints read of the sandbox (a ``SandboxServer``, whose module imports this one:
    a protocol keeps the dependency one way)."""

    api_key: str
    state: StopListState

    @property
    def error_style(self) -> str: ...

    @property
    def stats(self) -> SandboxStats: ...


def json_body(payload: Mapping[str, Any]) -> bytes:
    """``payload`` as compact JSON bytes."""
    return json.dumps(payload, separators=(",", ":")).encode()


def route(path: str) -> str | None:
    """The endpoint name of a request path (``/v1/stop-sms/add`` -> ``stop-sms/add``), or ``None``."""
    return _ROUTES.get(path.rstrip("/"))


def answer(sandbox: ApiSandbox, endpoint: str, query: str, raw: bytes, truncated: bool) -> Answer:
    """The API's answer to one request on ``endpoint``.

    :param query: The query string (the API key of GET requests, the id to delete).
    :param raw: The request body (the JSON of an add).
    :param truncated: Whether a list answer drops its last row (the ``truncated_list`` fault).
    """
    if endpoint == "stop-sms/add":
        return _add(sandbox, raw)
    params = parse_qs(query, keep_blank_values=True)
    denied = _check_key(sandbox, params.get("apiKey", [""])[0])
    if denied:
        return denied
    if endpoint == "stop-sms/list":
        return 200, sandbox.state.list_body(truncated=truncated)
    if endpoint == "me":
        return 200, _ME_BODY
    return _delete(sandbox, params.get("id", [""])[0])


def _add(sandbox: ApiSandbox, raw: bytes) -> Answer:
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return _error(sandbox, 90, "Invalid JSON body")
    denied = _check_key(sandbox, payload.get("apiKey"))
    if denied:
        return denied
    # Only the documented singular key; "phoneNumbers" (two doc tabs) is not accepted.
    code, stop_id = sandbox.state.add(payload.get("phoneNumber"))
    if code != CODE_OK:
        return _error(sandbox, code, _ADD_MESSAGES[code])
    sandbox.stats._record_add()
    return 200, json_body({"success": True, "code": 200, "stopId": stop_id})


def _delete(sandbox: ApiSandbox, raw_id: str) -> Answer:
    raw_id = raw_id.strip()
    if not _INTEGER.fullmatch(raw_id):
        return _error(sandbox, 3, "Number ID is required")
    if not sandbox.state.remove(int(raw_id)):
        return _error(sandbox, 4, "Number ID cannot be found")
    return 200, _OK_BODY


def _check_key(sandbox: ApiSandbox, key: object) -> Answer | None:
    if key is None or key == "":
        return _error(sandbox, 1, _MSG_KEY_REQUIRED)
    expected = sandbox.api_key
    if not isinstance(key, str) or not secrets.compare_digest(key.encode(), expected.encode()):
        return _error(sandbox, 10, _MSG_KEY_INVALID)
    return None


def _error(sandbox: ApiSandbox, code: int, message: str) -> Answer:
    if code == 90:
        status = 400
    elif sandbox.error_style == "http_200":
        status = 200
    else:
        status = _STATUS_4XX.get(code, 400)
    return status, json_body({"success": False, "code": code, "message": message})
