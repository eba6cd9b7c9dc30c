"""The SMS Partner API contract: endpoints, codes, and responses turned into data or typed errors.

The API's error signalling is inconsistent (see the project's API notes): errors may come as HTTP
4xx with a JSON body or as HTTP 200 with ``success: false``, and codes mean different things per
endpoint (3 = "already in the list" on add, "id required" on delete). So a response is a failure
when the status is not 2xx, or ``success`` is false, or ``code`` is not 200; and the code is read
in the context of the endpoint that returned it.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Collection, Mapping
from typing import Any

from airflow_provider_smspartner.exceptions import (
    InvalidPhoneNumberError,
    SmsPartnerAuthError,
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
#: ``stop-sms/add``: the phone number is missing.
PHONE_REQUIRED_CODE = 2
#: Any endpoint taking a number: the phone number is invalid.
INVALID_NUMBER_CODE = 9
#: ``stop-sms/delete``: the stop id is not on the list.
STOP_NOT_FOUND_CODE = 4
#: Rate limited (also signalled by HTTP 429).
RATE_LIMIT_CODE = 429

SNIPPET_LENGTH = 200


def snippet(text: str) -> str:
    """A short, single-line, redacted excerpt of a response body for error messages."""
    flat = re.sub(r"\s+", " ", text).strip()
    if len(flat) > SNIPPET_LENGTH:
        flat = flat[:SNIPPET_LENGTH] + "..."
    return redact(flat)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _api_message(body: Mapping[str, Any]) -> str:
    message = body.get("message")
    if message:
        return str(message)
    # Validation errors come as a list under "errors" (docs) or "error" (SDK fixtures).
    items = body.get("errors") or body.get("error")
    if isinstance(items, list):
        texts = [str(item.get("message", item)) if isinstance(item, dict) else str(item) for item in items]
        return "; ".join(texts)
    if isinstance(items, str):
        return items
    return "no message"


def response_code(body: Mapping[str, Any]) -> int | None:
    """The API ``code`` of a body as an int (it may arrive as text), or ``None``."""
    try:
        return int(body.get("code"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def parse_response(
    endpoint: str,
    status: int,
    headers: Mapping[str, str],
    text: str,
    accept_codes: Collection[int] = (),
) -> dict[str, Any]:
    """Return the JSON body of a successful response, or raise the matching ``SmsPartnerError``.

    :param endpoint: The API path below the base URL, e.g. ``stop-sms/add``; codes are read per endpoint.
    :param status: HTTP status code.
    :param headers: Response headers (``Retry-After`` is read on 429).
    :param text: Response body.
    :param accept_codes: API codes that are a normal outcome for this call (e.g. 3 on add).
    :raises SmsPartnerError: or one of its subclasses, carrying ``code``, ``message`` and ``http_status``.
    """
    where = f"SMS Partner {endpoint}"
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = None
    code = response_code(body) if body else None

    if status == 429 or code == RATE_LIMIT_CODE:
        message = _api_message(body) if body else "too many requests"
        raise SmsPartnerRateLimitError(
            f"{where}: rate limited ({redact(message)})",
            code=code,
            http_status=status,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    if status >= 500:
        detail = redact(_api_message(body)) if body else snippet(text)
        raise SmsPartnerServerError(f"{where}: server error: {detail}", code=code, http_status=status)
    if body is None:
        error_type = SmsPartnerResponseError if 200 <= status < 300 else SmsPartnerError
        raise error_type(
            f"{where}: expected a JSON object but got: {snippet(text) or '(empty body)'}", http_status=status
        )

    success = body.get("success", True)
    failed = not (200 <= status < 300) or success is False or (code is not None and code != OK_CODE)
    if not failed or (code is not None and code in accept_codes):
        return body

    message = f"{where}: {redact(_api_message(body))}"
    if code in AUTH_ERROR_CODES:
        raise SmsPartnerAuthError(message, code=code, http_status=status)
    if code == INVALID_NUMBER_CODE or (code == PHONE_REQUIRED_CODE and endpoint == ADD_ENDPOINT):
        raise InvalidPhoneNumberError(message, code=code, http_status=status)
    if code == STOP_NOT_FOUND_CODE and endpoint == DELETE_ENDPOINT:
        raise StopNotFoundError(message, code=code, http_status=status)
    raise SmsPartnerError(message, code=code, http_status=status)
