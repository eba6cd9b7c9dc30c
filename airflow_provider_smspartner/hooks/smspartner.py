"""SmsPartnerHook: the only code of the provider that speaks HTTP to SMS Partner or sees the API key."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, cast

import requests
from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from airflow_provider_smspartner import __version__
from airflow_provider_smspartner.api.contract import (
    ACCOUNT_ENDPOINT,
    ADD_ENDPOINT,
    ALREADY_PRESENT_CODE,
    DELETE_ENDPOINT,
    LIST_ENDPOINT,
    parse_response,
    redirect_error,
)
from airflow_provider_smspartner.api.retry_log import RetrySummaryLog
from airflow_provider_smspartner.api.throttle import PauseTooLong, Throttle, shared_throttle
from airflow_provider_smspartner.api.transport import DeadlineAdapter, NoRedirectSession, request_deadline
from airflow_provider_smspartner.exceptions import (
    SmsPartnerConfigError,
    SmsPartnerConnectionError,
    SmsPartnerRateLimitError,
    SmsPartnerResponseError,
    SmsPartnerRetryAfterTooLongError,
    SmsPartnerServerError,
)
from airflow_provider_smspartner.utils.connection import SmsPartnerSettings, settings_from_connection
from airflow_provider_smspartner.utils.redaction import redact, register_secret

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from redis import Redis

#: Upper bound of the time to open a connection, in seconds (within the request's deadline).
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class StopEntry:
    """One number of the stop list. ``created_at`` is timezone-aware UTC."""

    stop_id: int
    phone_number: str
    created_at: datetime


@dataclass(frozen=True)
class AddStopResult:
    """Outcome of one ``add_stop`` call.

    ``status`` is ``"added"`` (``stop_id`` set) or ``"already_present"`` (API code 3; the API
    returns no id then, so ``stop_id`` is ``None``).
    """

    status: Literal["added", "already_present"]
    stop_id: int | None
    phone_number: str


#: Connections whose per-process budget was explained in the log already (once per process).
_per_process_notices: set[str] = set()
_notices_lock = threading.Lock()


def is_retryable(exc: BaseException) -> bool:
    """The one retry rule: transport failures, 429, 5xx and untrustworthy bodies are worth another attempt.

    Auth errors and per-number errors (invalid number, unknown stop id) are answers, not accidents:
    retrying them would only hammer the API; nor is a 429 whose ``Retry-After`` is longer than the
    connection's ``max_retry_after`` retried.
    """
    if isinstance(exc, SmsPartnerRetryAfterTooLongError):
        return False
    return isinstance(
        exc,
        (SmsPartnerRateLimitError, SmsPartnerServerError, SmsPartnerConnectionError, SmsPartnerResponseError),
    )


class _wait_retry_after_or(wait_base):
    """Wait as long as a 429's ``Retry-After`` says, else as ``backoff`` says.

    The throttle is already paused for every thread when a 429 with ``Retry-After`` comes back
    (``_send_once``); a ``Retry-After`` longer than ``max_retry_after`` is never retried, so this
    wait is bounded by it.
    """

    def __init__(self, backoff: wait_base) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, SmsPartnerRateLimitError) and exc.retry_after is not None:
            return exc.retry_after
        return self.backoff(retry_state)


class SmsPartnerHook(BaseHook):
    """Talks to the SMS Partner stop-list API through an Airflow connection of type ``smspartner``.

    The API key is the connection's password; the host is the API base URL (default
    ``https://api.smspartner.fr/v1``). Optional extras: ``timeout``, ``max_retries``,
    ``retry_backoff``, ``max_retry_after``, ``requests_per_second``, ``api_timezone``,
    ``rate_limit_redis_conn_id``, ``rate_limit_key``.

    Nothing touches the network or the connection until a method is called, so the hook is cheap
    to build at DAG-parse time. One instance may be shared by many threads: it keeps one pooled
    ``requests.Session`` and every request passes the connection's throttle: process-wide, or
    shared by every process and worker through Redis with ``rate_limit_redis_conn_id``.

    Retrying a POST to ``stop-sms/add`` is safe: if the first attempt was applied but its response
    was lost, the retry answers code 3 ("already in the list"), which ``add_stop`` reports as
    ``already_present`` rather than an error.

    It fails closed: an answer that breaks the response contract (``api.contract``) is a
    ``SmsPartnerResponseError``, never an empty list or an ``added``; redirects are never followed
    (``SmsPartnerConfigError``), so the key goes to the configured host only; ``timeout`` bounds
    each request as a whole (connect, headers, body), not each socket read; a 429 with a
    ``Retry-After`` up to ``max_retry_after`` pauses every request of the connection in the process
    (in the fleet, with the shared rate limit) for that long, then the request is retried; a longer
    one raises :class:`SmsPartnerRetryAfterTooLongError` at once, and so does every request of the
    connection (of the fleet) until the server's wait ends, without reaching the API. Retries are
    logged as summaries, at most one line every few seconds.

    :param smspartner_conn_id: Airflow connection id of type ``smspartner``.
    """

    conn_name_attr = "smspartner_conn_id"
    default_conn_name = "smspartner_default"
    conn_type = "smspartner"
    hook_name = "SMS Partner"

    #: Upper bound for one exponential backoff wait, in seconds.
    max_backoff: float = 60.0

    def __init__(self, smspartner_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.smspartner_conn_id = smspartner_conn_id
        self._session_lock = threading.Lock()
        self._session: requests.Session | None = None
        self._activity = RetrySummaryLog(smspartner_conn_id)
        #: Attempts per call when set (``test_connection``: one); else ``max_retries + 1``.
        self._max_attempts: int | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(smspartner_conn_id={self.smspartner_conn_id!r})"

    # ----------------------------------------------------------------------------- connection
    @cached_property
    def settings(self) -> SmsPartnerSettings:
        """The validated connection settings (read once per hook)."""
        conn = self.get_connection(self.smspartner_conn_id)
        if conn.conn_type and conn.conn_type != self.conn_type:
            raise SmsPartnerConfigError(
                f"Connection {self.smspartner_conn_id!r} is of type {conn.conn_type!r}; "
                f"SmsPartnerHook needs a connection of type {self.conn_type!r}."
            )
        if conn.password:
            key = conn.password.strip()
            mask_secret(key)
            # The key also travels percent-encoded (query string) and JSON-escaped (body).
            for form in register_secret(key):
                mask_secret(form)
        return settings_from_connection(
            self.smspartner_conn_id, conn.password, conn.host, conn.port, conn.extra_dejson or {}
        )

    @cached_property
    def throttle(self) -> Throttle:
        """The request budget: shared by every hook of this connection in the process, or, with the
        extra ``rate_limit_redis_conn_id``, by every process and worker through Redis.

        :raises SmsPartnerConfigError: the Redis connection is missing, of another type, or the
            Redis provider is not installed; or the shared budget runs at another
            ``requests_per_second``, set by another connection with the same ``rate_limit_key``.
        :raises SmsPartnerConnectionError: Redis does not answer (never a silent per-process budget).
        """
        settings = self.settings
        if settings.rate_limit_redis_conn_id is not None:
            try:
                from airflow_provider_smspartner.api.rate_limit import shared_rate_limit
            except ImportError:  # redis-py itself is missing
                raise self._redis_provider_missing() from None
            limiter = shared_rate_limit(
                settings.rate_limit_redis_conn_id,
                settings.shared_rate_limit_key,
                settings.requests_per_second,
                self._connect_redis,
                conn_id=self.smspartner_conn_id,
            )
            self.log.debug("SMS Partner %r: rate limit %s", self.smspartner_conn_id, limiter)
            return limiter
        with _notices_lock:
            first = self.smspartner_conn_id not in _per_process_notices
            _per_process_notices.add(self.smspartner_conn_id)
        if first:
            self.log.info(
                "SMS Partner %r: requests_per_second=%g is the budget of this process only; parallel "
                "tasks and workers each get as much (set the connection extra "
                "rate_limit_redis_conn_id to share one budget through Redis)",
                self.smspartner_conn_id,
                settings.requests_per_second,
            )
        return shared_throttle(self.smspartner_conn_id, settings.requests_per_second)

    def _redis_provider_missing(self) -> SmsPartnerConfigError:
        return SmsPartnerConfigError(
            f"Connection {self.smspartner_conn_id!r}: extra 'rate_limit_redis_conn_id' needs the Redis "
            "provider: pip install 'airflow-provider-smspartner[redis]' (apache-airflow-providers-redis)."
        )

    def _connect_redis(self) -> tuple[Redis, str]:
        """The Redis client of the shared rate limit, from the Airflow connection the extra names."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        redis_conn_id = cast(str, self.settings.rate_limit_redis_conn_id)
        where = f"Connection {self.smspartner_conn_id!r}: extra 'rate_limit_redis_conn_id'"
        try:
            from airflow.providers.redis.hooks.redis import RedisHook
        except ImportError:
            raise self._redis_provider_missing() from None
        try:
            conn = self.get_connection(redis_conn_id)
        except AirflowNotFoundException:
            raise SmsPartnerConfigError(
                f"{where} names {redis_conn_id!r}, which is not a defined Airflow connection."
            ) from None
        if conn.conn_type and conn.conn_type != "redis":
            raise SmsPartnerConfigError(
                f"{where} names {redis_conn_id!r}, a connection of type {conn.conn_type!r}; "
                "it must be of type 'redis'."
            )
        try:
            client = RedisHook(redis_conn_id=redis_conn_id).get_conn()
        except ValueError as exc:
            raise SmsPartnerConfigError(f"{where}: {exc}") from None
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            # RedisHook sets no timeouts: an unreachable host would hang every request forever.
            # The connection's own timeout bounds it too: the UI's Test button waits for it.
            bound = min(self.settings.timeout, CONNECT_TIMEOUT)
            for name in ("socket_connect_timeout", "socket_timeout"):  # redis-py 8 defaults to 5 s
                current = pool.connection_kwargs.get(name)
                pool.connection_kwargs[name] = bound if current is None else min(current, bound)
            # One retry rule, the hook's: redis-py retries a failed command by itself (3 times in
            # 8.x, more on a refused connection), which multiplied every wait by up to 11.
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            pool.connection_kwargs["retry_on_timeout"] = False
            client.set_retry(Retry(NoBackoff(), 0))
        db = conn.extra_dejson.get("db") or 0
        return client, f"Redis connection {redis_conn_id!r} ({conn.host}:{conn.port or 6379}, db {db})"

    def get_conn(self) -> requests.Session:
        """Return the pooled HTTP session (created on first use, shared by threads)."""
        with self._session_lock:
            if self._session is None:
                settings = self.settings
                session = NoRedirectSession()
                # Retries are ours (tenacity); urllib3's own would bypass the throttle and the logging.
                adapter = DeadlineAdapter(pool_connections=4, pool_maxsize=64, max_retries=0)
                session.mount("https://", adapter)
                session.mount("http://", adapter)
                session.headers.update(
                    {"User-Agent": f"airflow-provider-smspartner/{__version__}", "Accept": "application/json"}
                )
                self.throttle  # noqa: B018 - resolve the shared throttle before threads race for it
                self.log.debug("SMS Partner connection %r -> %s", self.smspartner_conn_id, settings.base_url)
                self._session = session
            return self._session

    def close(self) -> None:
        """Close the pooled HTTP session and log what the retry summary still holds."""
        with self._session_lock:
            if self._session is not None:
                self._session.close()
                self._session = None
        self._activity.flush(self.log)

    # ----------------------------------------------------------------------------- transport
    def _request(
        self,
        method: Literal["GET", "POST"],
        endpoint: str,
        params: Mapping[str, Any] | None = None,
        accept_codes: tuple[int, ...] = (),
        check: Callable[[dict[str, Any]], None] | None = None,
        fast_parse: Callable[[bytes], dict[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """Send one API call with the key added, retrying what is retryable; return the JSON body.

        ``check`` validates a successful body inside the retry loop, so a body it rejects with a
        retryable error (e.g. a truncated list) is fetched again. ``fast_parse`` may decode a 2xx
        body more cheaply than ``json``; it returns ``None`` to defer to the generic parser.
        """
        settings = self.settings
        retrying = Retrying(
            stop=stop_after_attempt(self._max_attempts or settings.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(is_retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        return retrying(
            self._send_once, method, endpoint, dict(params or {}), accept_codes, check, fast_parse
        )

    def _send_once(
        self,
        method: str,
        endpoint: str,
        params: dict[str, Any],
        accept_codes: tuple[int, ...],
        check: Callable[[dict[str, Any]], None] | None,
        fast_parse: Callable[[bytes], dict[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """One attempt: wait for the throttle, send, read the answer under the response contract."""
        settings = self.settings
        try:
            waited = self.throttle.acquire(max_pause=settings.max_retry_after)
        except PauseTooLong as paused:
            # Another request's 429 asked for longer than this connection waits: no request now.
            raise self._retry_after_too_long(paused.seconds) from None
        self._activity.request(self.log, waited)
        started = time.monotonic()
        response = self._http(method, endpoint, params)
        status = response.status_code
        self.log.debug(
            "SMS Partner %s %s -> HTTP %s in %.3f s", method, endpoint, status, time.monotonic() - started
        )
        if 300 <= status < 400:
            raise redirect_error(endpoint, status, response.headers.get("Location"), self.smspartner_conn_id)
        body = None
        if fast_parse is not None and 200 <= status < 300:
            body = fast_parse(response.content)
        if body is None:
            try:
                body = parse_response(endpoint, status, response.headers, response.content, accept_codes)
            except SmsPartnerRateLimitError as exc:
                self._on_rate_limited(exc)
                raise
        if check is not None:
            check(body)
        return body

    def _http(self, method: str, endpoint: str, params: dict[str, Any]) -> requests.Response:
        """Send the request with the key, within the connection's whole-request deadline.

        :raises SmsPartnerConnectionError: a timeout or a failed connection (the key redacted).
        """
        settings = self.settings
        request_args: dict[str, Any] = {
            "timeout": (min(settings.timeout, CONNECT_TIMEOUT), settings.timeout),
            # A redirect would carry the key wherever it points (in the query string, or in the
            # re-sent body on 307/308), and turn an add into a GET on 301/302: refused by the caller.
            "allow_redirects": False,
        }
        # The documented contract: apiKey in the query string for GET, in the JSON body for POST.
        if method == "GET":
            request_args["params"] = {"apiKey": settings.api_key, **params}
        else:
            request_args["json"] = {"apiKey": settings.api_key, **params}
        deadline = time.monotonic() + settings.timeout
        failure: str | None = None
        token = request_deadline.set(deadline)
        try:
            return self.get_conn().request(method, f"{settings.base_url}/{endpoint}", **request_args)
        except requests.RequestException as exc:
            if isinstance(exc, requests.Timeout) or time.monotonic() >= deadline:
                failure = (
                    f"timed out: no complete answer within {settings.timeout:g} s "
                    f"(connect and the whole response; {type(exc).__name__})"
                )
            else:
                failure = f"connection failed: {type(exc).__name__}: {exc}"
        finally:
            request_deadline.reset(token)
        # Raised outside the except block so the original exception, whose text holds the request
        # URL (and so the API key), is not chained into tracebacks.
        raise SmsPartnerConnectionError(f"SMS Partner {endpoint}: {redact(failure)}")

    def _on_rate_limited(self, exc: SmsPartnerRateLimitError) -> None:
        """A 429 with ``Retry-After`` pauses the throttle at once, not when this thread gets to
        retry: every request of the connection (of the fleet, with the shared limit) waits, also
        those already waiting for their turn; past ``max_retry_after`` they fail at once instead.

        :raises SmsPartnerRetryAfterTooLongError: the server's wait is longer than ``max_retry_after``.
        """
        if exc.retry_after:
            self.throttle.pause(exc.retry_after)
            if exc.retry_after > self.settings.max_retry_after:
                raise self._retry_after_too_long(exc.retry_after, exc.code) from None
            self._activity.pause()

    def _retry_after_too_long(
        self, seconds: float, code: int | None = None
    ) -> SmsPartnerRetryAfterTooLongError:
        return SmsPartnerRetryAfterTooLongError(
            self.smspartner_conn_id, seconds, self.settings.max_retry_after, code=code
        )

    @cached_property
    def _wait(self) -> wait_base:
        """The server's ``Retry-After`` when a 429 gives one; else exponential backoff with jitter.

        Built once per hook (it keeps no state, so every thread shares it): tenacity's ``Retrying``
        of each call is freed by the garbage collector, not at once, and new wait objects per call
        made a bulk run of 5,000 adds collect about 10% more often, which brought a full collection
        (the GIL held for ~0.15 s) into the run.
        """
        backoff = self.settings.retry_backoff
        return _wait_retry_after_or(
            wait_exponential(multiplier=backoff, max=self.max_backoff) + wait_random(0, backoff)
        )

    def _log_retry(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        self._activity.retry(self.log, exc, retry_state.attempt_number, self.settings.max_retries, delay)

    # ----------------------------------------------------------------------------- endpoints
    def _fetch_stop_list(self) -> pa.StructArray:
        """Fetch the stop list as an Arrow array of ``{id, phoneNumber, createdAt}``, checked complete.

        The list has no pagination and reaches millions of rows, so a body that keeps the contract
        is parsed by Arrow's JSON reader (no Python object per row); anything else goes to the
        generic parser, which applies the same contract and names what is wrong.

        :raises SmsPartnerResponseError: when the answer breaks the list contract, e.g. ``nbData``
            disagrees with the rows received (after retries): a partial list is never returned.
        """
        from airflow_provider_smspartner.api.list_body import parse_stop_list_body, stop_list_array

        # Both parsers enforce the whole list contract (count and rows) inside the retry loop.
        body = self._request("GET", LIST_ENDPOINT, fast_parse=parse_stop_list_body)
        return stop_list_array(body.get("data"))

    def get_stop_list_fingerprint(self) -> tuple[int, str]:
        """Fetch the stop list and return only its size and fingerprint, for change detection.

        Hashed from the Arrow columns (no DataFrame, no Python object per row); nothing of the
        list outlives the call. One ``stop-sms/list`` call, through the throttle and the retries.

        :return: ``(rows_in_list, list_sha256)``, the same fingerprint as the extract's run log
            (:func:`~airflow_provider_smspartner.utils.stop_list.list_sha256`).
        """
        from airflow_provider_smspartner.utils.stop_list import list_sha256

        records = self._fetch_stop_list()
        return len(records), list_sha256(records.field("id"), records.field("phoneNumber"))

    def get_stop_list_df(self) -> pd.DataFrame:
        """Fetch the stop list as a DataFrame.

        The one list reader of every operator (extract, gate, bulk): ``phone_e164`` is made from
        the stored number without its invisible characters (controls, format characters,
        separators), and a row that still has no E.164 is logged (a warning naming its stop ids),
        never dropped: each caller decides what to do with it.

        :return: columns ``stop_id`` (int64), ``phone_number`` (as the API sent it),
            ``phone_e164`` (E.164, missing when no number could be made of it) and ``created_at``
            (UTC).
        """
        from airflow_provider_smspartner.api.list_body import records_to_frame, unreadable_stop_ids
        from airflow_provider_smspartner.phone_numbers import stop_list_e164
        from airflow_provider_smspartner.utils.stop_list import describe_stop_ids

        frame = records_to_frame(self._fetch_stop_list(), self.settings.api_timezone)
        frame.insert(2, "phone_e164", stop_list_e164(frame["phone_number"]).array)
        unreadable = unreadable_stop_ids(frame)
        if unreadable:
            self.log.warning(
                "%d stop(s) of the SMS Partner list hold no number that can be read as E.164 "
                "(stop ids %s); they match no contact by E.164",
                len(unreadable),
                describe_stop_ids(unreadable),
            )
        return frame

    def get_stop_list(self) -> list[StopEntry]:
        """Fetch the stop list as ``StopEntry`` objects (``created_at`` in UTC)."""
        from airflow_provider_smspartner.api.list_body import records_to_frame

        frame = records_to_frame(self._fetch_stop_list(), self.settings.api_timezone)
        return [
            StopEntry(stop_id=int(stop_id), phone_number=str(phone), created_at=created.to_pydatetime())
            for stop_id, phone, created in zip(
                frame["stop_id"], frame["phone_number"], frame["created_at"], strict=True
            )
        ]

    def add_stop(self, phone_number: str) -> AddStopResult:
        """Add one number to the stop list (the API takes one number per call).

        :param phone_number: The number, ideally E.164 (``+336...``); French national form is accepted.
        :return: ``AddStopResult`` with status ``added`` or ``already_present``.
        :raises InvalidPhoneNumberError: the API rejected the number (code 9, or 2 when empty).
        :raises SmsPartnerAuthError: the key was refused (an auth code, or HTTP 401/403).
        :raises SmsPartnerResponseError: the answer was neither a stop id nor code 3 (after retries).
        """
        body = self._request(
            "POST",
            ADD_ENDPOINT,
            {"phoneNumber": str(phone_number).strip()},
            accept_codes=(ALREADY_PRESENT_CODE,),
        )
        # The contract (api.contract) guarantees the shape: code 3 with success false, or code 200
        # with a positive integer stopId.
        if body["code"] == ALREADY_PRESENT_CODE:
            return AddStopResult(status="already_present", stop_id=None, phone_number=phone_number)
        return AddStopResult(status="added", stop_id=body["stopId"], phone_number=phone_number)

    def remove_stop(self, stop_id: int) -> None:
        """Remove a number from the stop list by its stop id (from the list, or from ``add_stop``).

        :raises StopNotFoundError: the id is not on the list (code 4).
        """
        if isinstance(stop_id, bool) or not isinstance(stop_id, int):
            raise TypeError(f"stop_id must be an int, got {stop_id!r}")
        self._request("GET", DELETE_ENDPOINT, {"id": stop_id})

    def get_account(self) -> dict[str, Any]:
        """Return the account information of ``GET /me`` (user and credits; fields vary by account)."""
        body = self._request("GET", ACCOUNT_ENDPOINT)
        return {k: v for k, v in body.items() if k not in ("success", "code")}

    def test_connection(self) -> tuple[bool, str]:
        """Check the key with ``GET /me``, one attempt, no retry: the answer (or the failure of the
        API or of the shared budget's Redis) comes within the connection's ``timeout``, since the
        UI's Test button waits for it. Never raises; the message never contains the key."""
        self._max_attempts = 1
        try:
            account = self.get_account()
        except Exception as exc:
            return False, redact(f"{type(exc).__name__}: {exc}")
        finally:
            self._max_attempts = None
        user = account.get("user") if isinstance(account.get("user"), dict) else {}
        username = user.get("username") if user else None
        who = f" as {username}" if username else ""
        return True, redact(f"Connected to SMS Partner at {self.settings.base_url}{who}.")
