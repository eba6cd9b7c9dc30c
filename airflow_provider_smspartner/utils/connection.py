"""Reads and validates the ``smspartner`` Airflow connection into typed settings."""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from airflow_provider_smspartner.exceptions import SmsPartnerConfigError

DEFAULT_BASE_URL = "https://api.smspartner.fr/v1"


def _config_error(message: str) -> SmsPartnerConfigError:
    # get_provider_info imports this module while Airflow itself is being imported (provider
    # discovery), so the exception, whose module imports Airflow, is imported only when raised.
    from airflow_provider_smspartner.exceptions import SmsPartnerConfigError

    return SmsPartnerConfigError(message)


@dataclass(frozen=True)
class ExtraField:
    """One optional extra of the ``smspartner`` connection: the ONE definition of it.

    The provider info's connection form (``conn-fields``), the validation below and the extras
    table of ``docs/connection.md`` are all read from :data:`EXTRA_FIELDS`.

    :param name: Key in the connection's extra JSON.
    :param label: Label in the connection form.
    :param kind: ``seconds`` / ``rate`` (a number > 0), ``backoff`` (a number >= 0), ``count`` (a
        whole number >= 0), ``timezone`` (an IANA zone name), ``conn_id`` (an Airflow connection
        id) or ``redis_key`` (a Redis key name).
    :param default: Used when the extra is absent (``None``: the feature is off).
    :param description: What it does, for the form and ``docs/connection.md``.
    """

    name: str
    label: str
    kind: Literal["seconds", "rate", "backoff", "count", "timezone", "conn_id", "redis_key"]
    default: float | int | str | None
    description: str

    @property
    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the form field (null = use the default)."""
        if self.kind in ("timezone", "conn_id", "redis_key"):
            return {"type": ["string", "null"]}
        if self.kind == "count":
            return {"type": ["integer", "null"], "minimum": 0}
        if self.kind == "backoff":
            return {"type": ["number", "null"], "minimum": 0}
        return {"type": ["number", "null"], "exclusiveMinimum": 0}

    @property
    def rule(self) -> str:
        """The rule a value must follow, in words (for error messages)."""
        return {
            "seconds": "a number of seconds > 0",
            "rate": "a number > 0",
            "backoff": "a number of seconds, 0 or more",
            "count": "a whole number, 0 or more",
            "timezone": "an IANA time zone such as 'Europe/Paris'",
            "conn_id": "an Airflow connection id (letters, digits, '_', '-', '.')",
            "redis_key": "a Redis key of printable ASCII without spaces or braces",
        }[self.kind]


EXTRA_FIELDS: tuple[ExtraField, ...] = (
    ExtraField("timeout", "Timeout (seconds)", "seconds", 30.0, "Seconds before a request is given up."),
    ExtraField(
        "max_retries", "Max retries", "count", 5, "Retries after the first attempt (5 = at most 6 requests)."
    ),
    ExtraField(
        "retry_backoff",
        "Retry backoff base (seconds)",
        "backoff",
        1.0,
        "Base of the exponential backoff, in seconds.",
    ),
    ExtraField(
        "max_retry_after",
        "Max Retry-After wait (seconds)",
        "seconds",
        300.0,
        "Longest `Retry-After` of a 429 that is waited out (every request of the connection pauses, "
        "then retries); a longer one fails the request at once with the time to retry, and a bulk "
        "run stops cleanly, recording the inputs left as `not_processed`.",
    ),
    ExtraField(
        "requests_per_second",
        "Requests per second (client throttle)",
        "rate",
        # 25/s = 1500/min, under the documented 2000 requests per minute per IP address.
        25.0,
        "Client-side throttle: the budget of every hook of the connection in a process, or of "
        "every process and worker when `rate_limit_redis_conn_id` is set.",
    ),
    ExtraField(
        "api_timezone",
        "API timezone (of createdAt)",
        "timezone",
        "Europe/Paris",
        "Zone of the list's naive `createdAt` times.",
    ),
    ExtraField(
        "rate_limit_redis_conn_id",
        "Shared rate limit: Redis connection id",
        "conn_id",
        None,
        "An Airflow connection of type `redis` (install the `[redis]` extra): `requests_per_second` "
        "becomes one budget for every task and worker using this connection, and a 429 pauses them all.",
    ),
    ExtraField(
        "rate_limit_key",
        "Shared rate limit: budget name",
        "redis_key",
        None,
        "Name of the shared budget in Redis (default `smspartner:<connection id>`); give connections "
        "that leave through one IP address the same name so they share one budget.",
    ),
)
_EXTRAS = {extra.name: extra for extra in EXTRA_FIELDS}


@dataclass(frozen=True)
class SmsPartnerSettings:
    """Validated settings of one ``smspartner`` connection. ``api_key`` is excluded from the repr."""

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    timeout: float = float(cast(float, _EXTRAS["timeout"].default))
    max_retries: int = int(cast(int, _EXTRAS["max_retries"].default))
    retry_backoff: float = float(cast(float, _EXTRAS["retry_backoff"].default))
    max_retry_after: float = float(cast(float, _EXTRAS["max_retry_after"].default))
    requests_per_second: float = float(cast(float, _EXTRAS["requests_per_second"].default))
    api_timezone: str = str(_EXTRAS["api_timezone"].default)
    rate_limit_redis_conn_id: str | None = None
    rate_limit_key: str | None = None

    @property
    def tzinfo(self) -> ZoneInfo:
        return ZoneInfo(self.api_timezone)

    @property
    def shared_rate_limit_key(self) -> str:
        """Name of the shared budget: ``rate_limit_key``, or ``smspartner:<connection id>``."""
        return self.rate_limit_key or f"smspartner:{self.conn_id}"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# What the host field may hold. Anything else is refused rather than interpreted, because URL
# parsers disagree on it: for ``http://evil.example\@127.0.0.1/v1`` Python's urlsplit reads the
# host 127.0.0.1 while requests (urllib3) connects to evil.example. So: ASCII only, no whitespace
# or control characters, no backslash, no user info (``@`` before the host), no query or
# fragment, a host made of letters, digits, dots and hyphens (or a bracketed IPv6 address), a
# numeric port, and a path of plain URL characters. On what is left, urlsplit and urllib3 agree.
_NETLOC = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(?P<port>[0-9]{1,5}))?"
)
_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")


def build_base_url(conn_id: str, host: str | None, port: int | None = None) -> str:
    """Turn the connection's host field into the API base URL.

    No host -> the public API; no scheme -> https; no path -> ``/v1``. Plain http is only allowed
    to loopback hosts (the sandbox): the API key travels in the URL and must not cross a network
    unencrypted. Anything a URL parser could read differently from ``requests`` is refused (see
    ``_NETLOC``), so the host checked here is the host the key is sent to.
    """
    raw = (host or "").strip()
    if not raw:
        return DEFAULT_BASE_URL

    def refuse(why: str, echo: bool = True) -> SmsPartnerConfigError:
        shown = f" {host!r}" if echo else ""
        return _config_error(
            f"Connection {conn_id!r}: API base URL{shown} {why}; use e.g. {DEFAULT_BASE_URL!r}."
        )

    if not raw.isascii() or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in raw):
        raise refuse("holds spaces, control or non-ASCII characters (write an IDN host as xn--...)")
    if "\\" in raw:
        raise refuse("holds a backslash")
    if "?" in raw or "#" in raw:
        raise refuse("holds a query or a fragment")
    if "://" not in raw:
        raw = "https://" + raw
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise refuse("is not an http(s) URL")
    if "@" in parts.netloc:
        # Not echoed: what precedes the @ may well be a secret.
        raise refuse("holds a user name or password (the API key belongs in the password field)", echo=False)
    netloc = _NETLOC.fullmatch(parts.netloc)
    if netloc is None:
        raise refuse("has an invalid host or port")
    if netloc["port"] is not None and not 0 < int(netloc["port"]) < 65536:
        raise refuse("has a port out of range")
    if not _PATH.fullmatch(parts.path):
        raise refuse("has an invalid path")
    hostname = netloc["host"]
    if scheme == "http" and not _is_loopback(hostname):
        raise _config_error(
            f"Connection {conn_id!r}: plain http:// is only allowed for loopback hosts "
            f"(got {hostname!r}); use https:// so the API key is not sent in clear text."
        )
    location = parts.netloc
    if port and netloc["port"] is None:
        if not 0 < int(port) < 65536:
            raise _config_error(f"Connection {conn_id!r}: port {port!r} is out of range.")
        location = f"{location}:{int(port)}"
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((scheme, location, path, "", ""))


def _check_number(conn_id: str, extra: ExtraField, value: Any) -> float | int:
    cast: Callable[[Any], Any] = int if extra.kind == "count" else float
    problem = _config_error(
        f"Connection {conn_id!r}: extra {extra.name!r} must be {extra.rule}, got {value!r}."
    )
    try:
        if isinstance(value, bool):
            raise ValueError
        number = cast(value)
        if cast is int and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise problem from None
    in_range = number >= 0 if extra.kind in ("count", "backoff") else number > 0
    if not in_range or (isinstance(number, float) and not math.isfinite(number)):
        raise problem
    return number


def _check_timezone(conn_id: str, extra: ExtraField, value: Any) -> str:
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise _config_error(
            f"Connection {conn_id!r}: extra {extra.name!r} must be {extra.rule}, got {value!r}."
        ) from None
    return str(value)


# Airflow's own rule for connection ids (airflow.utils.helpers.validate_key), plus a length cap.
_CONN_ID = re.compile(r"[A-Za-z0-9_.-]{1,250}")
# Printable ASCII without spaces, and without braces: the key goes inside a Redis Cluster hash tag.
_REDIS_KEY = re.compile(r"[!-z|~]{1,200}")


def _check_name(conn_id: str, extra: ExtraField, value: Any) -> str:
    pattern = _CONN_ID if extra.kind == "conn_id" else _REDIS_KEY
    if not isinstance(value, str) or not pattern.fullmatch(value.strip()):
        raise _config_error(
            f"Connection {conn_id!r}: extra {extra.name!r} must be {extra.rule}, got {value!r}."
        )
    return value.strip()


def settings_from_connection(
    conn_id: str, password: str | None, host: str | None, port: int | None, extras: Mapping[str, Any]
) -> SmsPartnerSettings:
    """Validate the fields of an Airflow connection; every error names the connection and the field."""
    api_key = (password or "").strip()
    if not api_key:
        raise _config_error(
            f"Connection {conn_id!r} has no API key: put the SMS Partner API key in its password field."
        )
    # A typo such as "max_retry" would otherwise be ignored silently and the default used.
    unknown = sorted(k for k in extras if k not in _EXTRAS)
    if unknown:
        raise _config_error(
            f"Connection {conn_id!r}: unknown extra(s) {', '.join(map(repr, unknown))}; "
            f"known extras are {', '.join(map(repr, _EXTRAS))}."
        )
    kwargs: dict[str, Any] = {}
    for name, value in extras.items():
        if value is None or value == "":  # an emptied form field means "use the default"
            continue
        extra = _EXTRAS[name]
        check = {"timezone": _check_timezone, "conn_id": _check_name, "redis_key": _check_name}.get(
            extra.kind, _check_number
        )
        kwargs[name] = check(conn_id, extra, value)
    if "rate_limit_key" in kwargs and "rate_limit_redis_conn_id" not in kwargs:
        # Without Redis the key would name nothing: the budget would silently stay per process.
        raise _config_error(
            f"Connection {conn_id!r}: extra 'rate_limit_key' names a shared budget, which needs "
            "'rate_limit_redis_conn_id' (an Airflow Redis connection) too."
        )
    return SmsPartnerSettings(
        conn_id=conn_id, base_url=build_base_url(conn_id, host, port), api_key=api_key, **kwargs
    )


def connection_form_fields() -> dict[str, dict[str, Any]]:
    """The ``conn-fields`` of the provider info: one form field per extra."""
    return {
        extra.name: {"label": extra.label, "description": extra.description, "schema": extra.json_schema}
        for extra in EXTRA_FIELDS
    }


def extras_placeholder() -> str:
    """The extra JSON placeholder of the form: every extra at its default."""
    return json.dumps({extra.name: extra.default for extra in EXTRA_FIELDS})
