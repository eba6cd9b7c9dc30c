"""Error types raised by the SMS Partner provider, one per family of API outcomes.

The SMS Partner API reports failures as ``{"success": false, "code": N, "message": "..."}``,
sometimes with an HTTP 4xx status and sometimes with HTTP 200, and its messages switch between
French and English. Callers should therefore branch on the exception *type* (or ``code``),
never on the message text.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from airflow.exceptions import AirflowException


class SmsPartnerError(AirflowException):
    """Base class of every error raised by the provider.

    :param message: Human-readable description; never contains the API key.
    :param code: The SMS Partner API ``code`` when the API answered with one, else ``None``.
    :param http_status: The HTTP status of the response, or ``None`` when no response arrived.
    """

    def __init__(self, message: str, *, code: int | None = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status

    def __str__(self) -> str:
        details = []
        if self.code is not None:
            details.append(f"code {self.code}")
        if self.http_status is not None:
            details.append(f"HTTP {self.http_status}")
        return f"{self.message} ({', '.join(details)})" if details else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, code={self.code!r}, http_status={self.http_status!r})"
        )

    def __reduce__(self):  # keep code/http_status when pickled (XCom, multiprocessing)
        return (_rebuild, (type(self), self.message, self.code, self.http_status))


def _rebuild(cls: type[SmsPartnerError], message: str, code: int | None, http_status: int | None):
    return cls(message, code=code, http_status=http_status)


class SmsPartnerConfigError(SmsPartnerError):
    """The Airflow connection is unusable (missing API key, bad URL, bad extra); fix the connection."""


class SmsPartnerAuthError(SmsPartnerError):
    """API key missing or refused, or the account is deactivated, blocked or IP-restricted.

    Codes 1, 10, 20, 30, 40 and 96. Never retried.
    """


class InvalidPhoneNumberError(SmsPartnerError):
    """The API rejected a phone number (code 9, or code 2 when the number was empty)."""


class StopNotFoundError(SmsPartnerError):
    """The stop id to delete is not on the list (delete endpoint, code 4)."""


class SmsPartnerRateLimitError(SmsPartnerError):
    """HTTP 429: too many requests. Retried, honouring ``Retry-After`` up to the connection's
    ``max_retry_after`` (a longer one is :class:`SmsPartnerRetryAfterTooLongError`).

    :param retry_after: Seconds the server asked us to wait, when it said so.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = 429,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, http_status=http_status)
        self.retry_after = retry_after


class SmsPartnerRetryAfterTooLongError(SmsPartnerRateLimitError):
    """HTTP 429 whose ``Retry-After`` is longer than the connection's ``max_retry_after``.

    Not retried and not waited out: the request fails at once, and so does every later request
    of the connection in the process (of the fleet, with the shared rate limit) until the wait
    ends, without reaching the API. A bulk run stops cleanly: the inputs left are recorded
    ``not_processed`` with :attr:`retry_hint` as their note, then the task fails with this message.

    :param conn_id: The ``smspartner`` connection.
    :param retry_after: Seconds the server asked to wait (for a caller that met the pause another
        caller's 429 began, the seconds left of it).
    :param max_retry_after: The connection's limit, in seconds.
    :param retry_at: When the wait ends (aware UTC); default now + ``retry_after``, rounded up to
        the second.
    """

    def __init__(
        self,
        conn_id: str,
        retry_after: float,
        max_retry_after: float,
        *,
        retry_at: datetime | None = None,
        code: int | None = None,
        http_status: int | None = 429,
    ) -> None:
        if retry_at is None:
            retry_at = datetime.now(timezone.utc) + timedelta(seconds=retry_after)
            if retry_at.microsecond:
                retry_at = retry_at.replace(microsecond=0) + timedelta(seconds=1)
        self.conn_id = conn_id
        self.max_retry_after = max_retry_after
        self.retry_at = retry_at
        super().__init__(
            f"SMS Partner asked to wait {math.ceil(retry_after)} s (Retry-After), more than "
            f"max_retry_after={max_retry_after:g} of connection {conn_id!r}; retry after "
            f"{self.retry_at_text} or raise max_retry_after.",
            code=code,
            http_status=http_status,
            retry_after=retry_after,
        )

    @property
    def retry_at_text(self) -> str:
        """:attr:`retry_at` as ``2026-12-07T15:00:00Z``."""
        return self.retry_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def retry_hint(self) -> str:
        """The server's wait in a few words, e.g. ``retry_after=7200s, retry after 2026-12-07T15:00:00Z``
        (the note of the inputs a bulk run left ``not_processed``)."""
        return f"retry_after={math.ceil(self.retry_after or 0)}s, retry after {self.retry_at_text}"

    def __reduce__(self):  # the message is built from the arguments
        return (
            _rebuild_retry_after,
            (
                type(self),
                self.conn_id,
                self.retry_after,
                self.max_retry_after,
                self.retry_at,
                self.code,
                self.http_status,
            ),
        )


def _rebuild_retry_after(
    cls: type[SmsPartnerRetryAfterTooLongError],
    conn_id: str,
    retry_after: float,
    max_retry_after: float,
    retry_at: datetime,
    code: int | None,
    http_status: int | None,
) -> SmsPartnerRetryAfterTooLongError:
    return cls(conn_id, retry_after, max_retry_after, retry_at=retry_at, code=code, http_status=http_status)


class SmsPartnerServerError(SmsPartnerError):
    """HTTP 5xx from the API. Retried."""


class SmsPartnerConnectionError(SmsPartnerError):
    """No usable response: connection refused or dropped, or a timeout. Retried."""


class SmsPartnerResponseError(SmsPartnerError):
    """The API answered something the provider cannot trust: a 2xx body that breaks the response
    contract (not UTF-8 JSON, ``success``/``code`` not exactly ``true``/``200``, a missing or
    mistyped field, a stop list whose ``nbData`` disagrees with its rows). Retried, then raised:
    no partial data is returned."""


class StopListGuardError(SmsPartnerError):
    """The stop-list extract refused to apply a list that would empty the table or remove more
    than ``max_removed_fraction`` of the stops on it; nothing was written. The message gives the
    counts and the parameter that overrides the check."""


class DuplicateStopIdError(SmsPartnerResponseError):
    """The stop list holds one stop id twice with different numbers, so which number the id stands
    for is unknown; the message names the ids. Nothing was written."""
