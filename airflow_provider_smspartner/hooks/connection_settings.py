"""Reads and validates the ``smspartner`` Airflow connection into typed settings."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from airflow_provider_smspartner.exceptions import SmsPartnerConfigError

DEFAULT_BASE_URL = "https://api.smspartner.fr/v1"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_BACKOFF = 1.0
#: 25/s = 1500/min, under the documented 2000 requests per minute per IP address.
DEFAULT_REQUESTS_PER_SECOND = 25.0
DEFAULT_API_TIMEZONE = "Europe/Paris"
KNOWN_EXTRAS = ("timeout", "max_retries", "retry_backoff", "requests_per_second", "api_timezone")


@dataclass(frozen=True)
class SmsPartnerSettings:
    """Validated settings of one ``smspartner`` connection. ``api_key`` is excluded from the repr."""

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND
    api_timezone: str = DEFAULT_API_TIMEZONE

    @property
    def tzinfo(self) -> ZoneInfo:
        return ZoneInfo(self.api_timezone)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_base_url(conn_id: str, host: str | None, port: int | None = None) -> str:
    """Turn the connection's host field into the API base URL.

    No host -> the public API; no scheme -> https; no path -> ``/v1``. Plain http is only allowed
    to loopback hosts (the sandbox): the API key travels in the URL and must not cross a network
    unencrypted.
    """
    raw = (host or "").strip()
    if not raw:
        return DEFAULT_BASE_URL
    if "://" not in raw:
        raw = "https://" + raw
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise SmsPartnerConfigError(
            f"Connection {conn_id!r}: API base URL {host!r} is not an http(s) URL; "
            f"use e.g. {DEFAULT_BASE_URL!r}."
        )
    if scheme == "http" and not _is_loopback(parts.hostname):
        raise SmsPartnerConfigError(
            f"Connection {conn_id!r}: plain http:// is only allowed for loopback hosts "
            f"(got {parts.hostname!r}); use https:// so the API key is not sent in clear text."
        )
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((scheme, netloc, path, "", ""))


def _extra_value(extras: Mapping[str, Any], name: str) -> Any:
    # The connection form of Airflow may store fields with the legacy ``extra__<type>__`` prefix.
    for key in (name, f"extra__smspartner__{name}"):
        value = extras.get(key)
        if value is not None and value != "":
            return value
    return None


def _number(conn_id: str, name: str, value: Any, cast: Callable[[Any], Any], check: str) -> Any:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = cast(value)
        if cast is int and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise SmsPartnerConfigError(
            f"Connection {conn_id!r}: extra {name!r} must be {check}, got {value!r}."
        ) from None
    ok = number >= 0 if check.endswith("or more") else number > 0
    if not ok or (isinstance(number, float) and not math.isfinite(number)):
        raise SmsPartnerConfigError(f"Connection {conn_id!r}: extra {name!r} must be {check}, got {value!r}.")
    return number


def settings_from_connection(
    conn_id: str, password: str | None, host: str | None, port: int | None, extras: Mapping[str, Any]
) -> SmsPartnerSettings:
    """Validate the fields of an Airflow connection; every error names the connection and the field."""
    api_key = (password or "").strip()
    if not api_key:
        raise SmsPartnerConfigError(
            f"Connection {conn_id!r} has no API key: put the SMS Partner API key in its password field."
        )
    _reject_unknown_extras(conn_id, extras)
    kwargs: dict[str, Any] = {}
    specs: list[tuple[str, Callable[[Any], Any], str]] = [
        ("timeout", float, "a number of seconds > 0"),
        ("max_retries", int, "a whole number, 0 or more"),
        ("retry_backoff", float, "a number of seconds, 0 or more"),
        ("requests_per_second", float, "a number > 0"),
    ]
    for name, cast, check in specs:
        value = _extra_value(extras, name)
        if value is not None:
            kwargs[name] = _number(conn_id, name, value, cast, check)
    timezone = _extra_value(extras, "api_timezone")
    if timezone is not None:
        try:
            ZoneInfo(str(timezone))
        except (ZoneInfoNotFoundError, ValueError):
            raise SmsPartnerConfigError(
                f"Connection {conn_id!r}: extra 'api_timezone' must be an IANA time zone such as "
                f"'Europe/Paris', got {timezone!r}."
            ) from None
        kwargs["api_timezone"] = str(timezone)
    return SmsPartnerSettings(
        conn_id=conn_id, base_url=build_base_url(conn_id, host, port), api_key=api_key, **kwargs
    )


def _reject_unknown_extras(conn_id: str, extras: Mapping[str, Any]) -> None:
    # A typo such as "max_retry" would otherwise be ignored silently and the default used.
    unknown = sorted(k for k in extras if k.removeprefix("extra__smspartner__") not in KNOWN_EXTRAS)
    if unknown:
        raise SmsPartnerConfigError(
            f"Connection {conn_id!r}: unknown extra(s) {', '.join(map(repr, unknown))}; "
            f"known extras are {', '.join(map(repr, KNOWN_EXTRAS))}."
        )
