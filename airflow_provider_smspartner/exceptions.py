"""Error types raised by the SMS Partner provider, one per family of API outcomes.

The SMS Partner API reports failures as ``{"success": false, "code": N, "message": "..."}``,
sometimes with an HTTP 4xx status and sometimes with HTTP 200, and its messages switch between
French and English. Callers should therefore branch on the exception *type* (or ``code``),
never on the message text.
"""

from __future__ import annotations

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
    """HTTP 429: too many requests. Retried, honouring ``Retry-After``.

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
