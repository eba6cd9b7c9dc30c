"""The SMS Partner API contract: endpoints, codes, and responses turned into data or typed errors.

The API's error signalling is inconsistent (see the project's API notes): errors may come as HTTP
4xx with a JSON body or as HTTP 200 with ``success: false``, and codes mean different things per
endpoint (3 = "already in the list" on add, "id required" on delete). So the code is read in the
context of the endpoint that returned it.

The provider fails closed: the suppression table is what stands between an opted-out person and
the next campaign, so an answer is a success only when it says so exactly, in the documented JSON
types, and carries what its endpoint promises. This module is the one place that decides:

- a success is HTTP 2xx, ``success`` the JSON boolean ``true``, ``code`` the JSON integer 200,
  plus the endpoint's fields (:data:`CONTRACTS`): ``stop-sms/list`` needs ``data`` an array and
  ``nbData`` a non-negative integer equal to its length, every row an object with an integer
  ``id`` in 1..2**63-1, a string ``phoneNumber`` and a ``YYYY-MM-DD HH:MM:SS`` string
  ``createdAt``; ``stop-sms/add`` needs an integer ``stopId`` in the same range. Unknown extra
  fields are fine; nothing is coerced (``"200"``, ``12.7``, ``1e3`` or ``true`` are not integers);
- an API error is a JSON object with a ``code`` other than 200: with any status but 2xx, or with
  HTTP 2xx and ``success`` the JSON boolean ``false``. To classify an error, a code written as
  text (``"10"``) is read as its number, since that only ever makes an answer an error; a code an
  endpoint accepts as an outcome (3 on add) must be a JSON integer and come with ``success: false``;
- HTTP 401/403 without a code is an auth error; any 3xx is refused (redirects are never followed:
  the key would travel with them); 429 is a rate limit; 5xx a server error;
- anything else on a 2xx (not UTF-8, not JSON, duplicate keys, ``NaN``, nested too deep, a
  success with the wrong types or missing fields, contradictory ``success``/``code``) is a
  :class:`SmsPartnerResponseError` naming the endpoint and what was wrong: retried, then raised.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_smspartner.exceptions import (
    InvalidPhoneNumberError,
    SmsPartnerAuthError,
    SmsPartnerConfigError,
    SmsPartnerError,
    SmsPartnerRateLimitError,
    SmsPartnerResponseError,
    SmsPartnerServerError,
    StopNotFoundError,
)
from airflow_provider_smspartner.utils.redaction import redact

# Endpoints, below the base URL.
LIST_ENDPOINT = "stop-sms/list"
ADD_ENDPOINT = "stop-sms/add"
DELETE_ENDPOINT = "stop-sms/delete"
ACCOUNT_ENDPOINT = "me"

# API codes (the ``code`` field of a body), read per endpoint.
OK_CODE = 200
#: ``stop-sms/add``: the number is already on the list (a success that inserted nothing).
ALREADY_PRESENT_CODE = 3
#: Codes that mean the key or the account is unusable: retrying cannot help.
AUTH_ERROR_CODES = frozenset({1, 10, 20, 30, 40, 96})
#: HTTP statuses that refuse the caller even without an API code.
AUTH_HTTP_STATUSES = frozenset({401, 403})
#: ``stop-sms/add``: the phone number is missing.
PHONE_REQUIRED_CODE = 2
#: Any endpoint taking a number: the phone number is invalid.
INVALID_NUMBER_CODE = 9
#: ``stop-sms/delete``: the stop id is not on the list.
STOP_NOT_FOUND_CODE = 4
#: Rate limited (also signalled by HTTP 429).
RATE_LIMIT_CODE = 429

#: Stop ids (list rows' ``id``, add's ``stopId``) are positive and fit a signed 64-bit integer.
MIN_STOP_ID = 1
MAX_STOP_ID = 2**63 - 1
#: ``createdAt`` as the API writes it (naive local time), each field within its range (no month 13,
#: hour 24 or second 60); the rest (Feb 30, year 0000, an instant out of a ``datetime``'s range)
#: is checked where it is read (``api.list_body.local_times_to_utc``). ASCII digits only, as
#: Arrow's RE2 reads it.
CREATED_AT_PATTERN = (
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]) (?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
)
_CREATED_AT = re.compile(CREATED_AT_PATTERN)

SNIPPET_LENGTH = 200
_VALUE_LENGTH = 60
_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()


def snippet(text: str | bytes) -> str:
    """A short, single-line, redacted excerpt of a response body for error messages."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    # Redacted before anything else: flattening or cutting could split a key and hide it from redact.
    flat = re.sub(r"\s+", " ", redact(text)).strip()
    if len(flat) > SNIPPET_LENGTH:
        flat = flat[:SNIPPET_LENGTH] + "..."
    # Lone surrogates (legal in JSON escapes) would break log handlers that encode strictly.
    return flat.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ------------------------------------------------------------------------------------ JSON values
def is_json_integer(value: object) -> bool:
    """Whether ``value`` was a JSON integer (``true`` is not 1 and ``12.0`` is not 12 here)."""
    return type(value) is int


def is_stop_id(value: object) -> bool:
    """Whether ``value`` is a JSON integer usable as a stop id (1 .. 2**63-1)."""
    return type(value) is int and MIN_STOP_ID <= value <= MAX_STOP_ID  # type: ignore[operator]


def describe(value: object) -> str:
    """``value`` in words, by its JSON type, for error messages (short and redacted)."""
    if value is _MISSING:
        return "nothing (the field is missing)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        text = str(value) if value.bit_length() < 200 else f"{str(value)[:20]}... ({len(str(value))} digits)"
        return f"the integer {text}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        # Redacted before it is cut: a cut key would no longer match.
        shown = redact(value)
        shown = shown if len(shown) <= _VALUE_LENGTH else shown[:_VALUE_LENGTH] + "..."
        return f"the string {snippet(json.dumps(shown, ensure_ascii=False))}"
    if isinstance(value, list):
        return f"an array of {len(value)} item(s)"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _object_with_unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins (Arrow refuses them): so do we.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(
                    f"key {snippet(json.dumps(key, ensure_ascii=False))} appears twice in an object"
                )
            seen.add(key)
    return obj


def decode_json(content: str | bytes) -> tuple[Any, str | None]:
    """Decode a body strictly: UTF-8, one JSON document, no ``NaN``/``Infinity``, no duplicate keys.

    :return: ``(value, None)``, or ``(None, why)`` when the body is not such JSON.
    """
    if isinstance(content, bytes):
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"a body that is not valid UTF-8 (bad byte at offset {exc.start})"
    else:
        text = content
    if not text.strip():
        return None, "an empty body"
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_object_with_unique_keys)
    except RecursionError:
        return None, "JSON nested too deeply to be read"
    except ValueError as exc:  # JSONDecodeError, our refusals, integers of more than 4300 digits
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return None, f"a body that is not valid JSON ({snippet(reason)}): {snippet(text)}"
    return value, None


# ------------------------------------------------------------------------------------ contract
def contract_error(endpoint: str, problem: str, http_status: int | None = None) -> SmsPartnerResponseError:
    """The error for an answer that breaks the response contract of ``endpoint`` (retryable)."""
    return SmsPartnerResponseError(
        f"SMS Partner {endpoint}: untrustworthy answer, refused: {problem}", http_status=http_status
    )


def incomplete_list_error(
    announced: int, received: int, http_status: int | None = None
) -> SmsPartnerResponseError:
    """The error for a list whose ``nbData`` disagrees with its rows: no partial data is returned."""
    return contract_error(
        LIST_ENDPOINT,
        f"incomplete list: nbData={announced} but {received} rows received; refusing partial data",
        http_status,
    )


def stop_row_problem(row: object) -> str | None:
    """What is wrong with one row of the list (``None`` when it keeps the contract)."""
    if not isinstance(row, dict):
        return f"a row must be an object, got {describe(row)}"
    stop_id = row.get("id", _MISSING)
    if not is_stop_id(stop_id):
        return f"'id' must be an integer from {MIN_STOP_ID} to {MAX_STOP_ID}, got {describe(stop_id)}"
    phone = row.get("phoneNumber", _MISSING)
    if not isinstance(phone, str):
        return f"'phoneNumber' must be a string, got {describe(phone)}"
    if not phone.isascii():
        try:
            phone.encode("utf-8")
        except UnicodeEncodeError:
            return "'phoneNumber' must be text, got a string holding a lone surrogate escape"
    created = row.get("createdAt", _MISSING)
    if not isinstance(created, str) or not _CREATED_AT.fullmatch(created):
        return f"'createdAt' must be a date and time 'YYYY-MM-DD HH:MM:SS', got {describe(created)}"
    return None


def check_list_body(body: Mapping[str, Any], http_status: int | None = None) -> None:
    """The fields ``stop-sms/list`` promises, with plain JSON rows (the Arrow path checks its own)."""
    data = body.get("data", _MISSING)
    announced = body.get("nbData", _MISSING)
    if not isinstance(data, list):
        raise contract_error(LIST_ENDPOINT, f"'data' must be an array, got {describe(data)}", http_status)
    if not is_json_integer(announced) or announced < 0:
        raise contract_error(
            LIST_ENDPOINT, f"'nbData' must be a non-negative integer, got {describe(announced)}", http_status
        )
    if announced != len(data):
        raise incomplete_list_error(announced, len(data), http_status)
    for index, row in enumerate(data):
        problem = stop_row_problem(row)
        if problem is not None:
            raise contract_error(LIST_ENDPOINT, f"row {index}: {problem}", http_status)


def check_add_body(body: Mapping[str, Any], http_status: int | None = None) -> None:
    """The field ``stop-sms/add`` promises on success: the new stop id."""
    stop_id = body.get("stopId", _MISSING)
    if not is_stop_id(stop_id):
        raise contract_error(
            ADD_ENDPOINT,
            f"'stopId' must be an integer from {MIN_STOP_ID} to {MAX_STOP_ID}, got {describe(stop_id)}",
            http_status,
        )


#: Per endpoint, what a success must carry beyond ``success: true`` and ``code: 200``.
CONTRACTS: dict[str, Callable[[Mapping[str, Any], int | None], None]] = {
    LIST_ENDPOINT: check_list_body,
    ADD_ENDPOINT: check_add_body,
}


def _api_message(body: Mapping[str, Any]) -> str:
    message = body.get("message")
    if isinstance(message, str) and message.strip():
        return snippet(message)
    # Validation errors come as a list under "errors" (docs) or "error" (SDK fixtures).
    items = body.get("errors") or body.get("error")
    if isinstance(items, list):
        texts = [str(item.get("message", item)) if isinstance(item, dict) else str(item) for item in items]
        return snippet("; ".join(texts))
    if isinstance(items, str) and items.strip():
        return snippet(items)
    if message not in (None, ""):
        return snippet(str(message))
    return "no message"


def redirect_target(location: str | None) -> str:
    """The host a ``Location`` header points at, in words (never its path or query: no key there)."""
    if not location or not location.strip():
        return "nowhere (no Location header)"
    try:
        parts = urlsplit(location.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return "an unparsable location"
    if not host:
        return "another path of the same host"
    text = f"{host}:{port}" if port else host
    if len(text) > _VALUE_LENGTH:
        text = text[:_VALUE_LENGTH] + "..."
    return f"host {redact(text)!r}"


def redirect_error(
    endpoint: str, status: int, location: str | None, conn_id: str | None = None
) -> SmsPartnerConfigError:
    """The error for a 3xx answer: redirects are never followed, since the key would go with them."""
    whose = f"connection {conn_id!r}" if conn_id else "the connection"
    return SmsPartnerConfigError(
        f"SMS Partner {endpoint}: the server answered a redirect (HTTP {status}) to "
        f"{redirect_target(location)}; redirects are never followed, so the API key is not sent "
        f"there. Check the API base URL (host) of {whose}.",
        http_status=status,
    )


def _error_code(value: object) -> int | None:
    """The API code of a body, to classify it: a JSON integer, or digits in a string.

    Reading ``"10"`` as 10 here only ever turns an answer into an error (an auth error stops a
    bulk run at once); whether an accepted code (3 on add) was a JSON integer is checked apart.
    """
    if is_json_integer(value):
        return value  # type: ignore[return-value]
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        return int(value)
    return None


def _api_error(
    endpoint: str, body: Mapping[str, Any], code: int, status: int, accept_codes: Collection[int]
) -> dict[str, Any]:
    """Return an accepted error body (e.g. code 3 on add) or raise the error ``code`` stands for."""
    if code in accept_codes:
        # An accepted code is an outcome, not an error: it gets the strictness of a success.
        if not is_json_integer(body.get("code")) or body.get("success") is not False:
            raise contract_error(
                endpoint,
                f"code {code} must be a JSON integer and come with 'success' false (a JSON "
                f"boolean), got code {describe(body.get('code'))} and 'success' "
                f"{describe(body.get('success', _MISSING))}",
                status,
            )
        return dict(body)
    message = f"SMS Partner {endpoint}: {_api_message(body)}"
    if code in AUTH_ERROR_CODES:
        raise SmsPartnerAuthError(message, code=code, http_status=status)
    if code == INVALID_NUMBER_CODE or (code == PHONE_REQUIRED_CODE and endpoint == ADD_ENDPOINT):
        raise InvalidPhoneNumberError(message, code=code, http_status=status)
    if code == STOP_NOT_FOUND_CODE and endpoint == DELETE_ENDPOINT:
        raise StopNotFoundError(message, code=code, http_status=status)
    raise SmsPartnerError(message, code=code, http_status=status)


def parse_response(
    endpoint: str,
    status: int,
    headers: Mapping[str, str],
    content: str | bytes,
    accept_codes: Collection[int] = (),
) -> dict[str, Any]:
    """Return the JSON body of a successful response, or raise the matching ``SmsPartnerError``.

    See the module docstring for the contract.

    :param endpoint: The API path below the base URL, e.g. ``stop-sms/add``; codes are read per endpoint.
    :param status: HTTP status code.
    :param headers: Response headers (``Retry-After`` is read on 429, ``Location`` on 3xx).
    :param content: Response body, raw bytes (decoded here, strictly as UTF-8) or text.
    :param accept_codes: API codes that are a normal outcome for this call (e.g. 3 on add); such a
        body is returned as is.
    :raises SmsPartnerResponseError: a 2xx answer that breaks the contract (retryable).
    :raises SmsPartnerConfigError: a redirect (3xx), never followed.
    :raises SmsPartnerError: or one of its subclasses, carrying ``code``, ``message`` and ``http_status``.
    """
    value, problem = decode_json(content)
    body: dict[str, Any] | None = value if isinstance(value, dict) else None
    if problem is None and body is None:
        problem = describe(value)
    code = _error_code(body.get("code")) if body is not None else None
    if not 200 <= status < 300 or code == RATE_LIMIT_CODE:  # a 429 code is one whatever the status
        return _non_2xx(endpoint, status, headers, content, body, code, accept_codes)
    if body is None:
        raise SmsPartnerResponseError(
            f"SMS Partner {endpoint}: expected a JSON object but got {problem}", http_status=status
        )
    success = body.get("success", _MISSING)
    if success is False and code is not None and code != OK_CODE:
        return _api_error(endpoint, body, code, status, accept_codes)
    if success is not True:
        raise contract_error(
            endpoint, f"'success' must be true (a JSON boolean), got {describe(success)}", status
        )
    if not is_json_integer(body.get("code")) or code != OK_CODE:
        raise contract_error(
            endpoint, f"'code' must be the integer 200, got {describe(body.get('code', _MISSING))}", status
        )
    check = CONTRACTS.get(endpoint)
    if check is not None:
        check(body, status)
    return body


def _non_2xx(
    endpoint: str,
    status: int,
    headers: Mapping[str, str],
    content: str | bytes,
    body: dict[str, Any] | None,
    code: int | None,
    accept_codes: Collection[int],
) -> dict[str, Any]:
    """:func:`parse_response` for a status outside 2xx (or a rate-limit code): the error it stands
    for, or an accepted API code's body."""
    where = f"SMS Partner {endpoint}"
    if 300 <= status < 400:
        raise redirect_error(endpoint, status, headers.get("Location"))
    if status == 429 or code == RATE_LIMIT_CODE:
        message = _api_message(body) if body else "too many requests"
        raise SmsPartnerRateLimitError(
            f"{where}: rate limited ({message})",
            code=code,
            http_status=status,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    if status >= 500:
        detail = _api_message(body) if body else snippet(content)
        raise SmsPartnerServerError(f"{where}: server error: {detail}", code=code, http_status=status)
    if body is not None and code is not None and code != OK_CODE:
        return _api_error(endpoint, body, code, status, accept_codes)
    detail = _api_message(body) if body else (snippet(content) or "(empty body)")
    if status in AUTH_HTTP_STATUSES:
        raise SmsPartnerAuthError(
            f"{where}: HTTP {status} without an API code: the key or the account was refused ({detail})",
            http_status=status,
        )
    raise SmsPartnerError(f"{where}: {detail}", code=code, http_status=status)
