"""SmsPartnerHook and a 429's ``Retry-After``, over loopback HTTP against the sandbox.

Issue 19: a ``Retry-After`` of hours was capped at 60 s, so the fleet knocked again every minute
and a bulk run spent every input's retries against 429s. Now a ``Retry-After`` up to the
connection's ``max_retry_after`` (default 300 s) pauses every caller and is retried; a longer one
fails at once (``SmsPartnerRetryAfterTooLongError``) and so does every later request of the
connection, without reaching the API, until the server's wait ends.

Timings: what the code controls is asserted (requests the sandbox received, pauses the hook
requested); wall-clock figures only as lower bounds (a sleep is never shorter than asked) or with
wide margins.
"""

from __future__ import annotations

import pickle
import re
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from airflow_provider_smspartner.exceptions import (
    SmsPartnerRateLimitError,
    SmsPartnerRetryAfterTooLongError,
)
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook, is_retryable
from tests.conftest import TEST_API_KEY, smspartner_connection_json
from tests.helpers import use_connection

#: ``retry after <when>`` in the errors' messages.
WHEN = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def own_connection(monkeypatch: pytest.MonkeyPatch, sandbox, **extras: object) -> str:
    """A connection id of its own pointing at ``sandbox``: its per-process throttle is new, so a
    long pause this test provokes holds no other test back."""
    conn_id = f"retry_after_{uuid.uuid4().hex[:10]}"
    use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url, **extras), conn_id)
    return conn_id


def spy_pauses(monkeypatch: pytest.MonkeyPatch, hook: SmsPartnerHook) -> list[float]:
    """The pauses the hook asks of its throttle, in order (the throttle still applies them)."""
    throttle, pauses = hook.throttle, []
    original = throttle.pause

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        original(seconds)

    monkeypatch.setattr(throttle, "pause", pause)
    return pauses


def count_when_paused(
    monkeypatch: pytest.MonkeyPatch, hook: SmsPartnerHook, sandbox, endpoint: str
) -> list[int]:
    """The requests on ``endpoint`` the sandbox had received each time the hook paused its throttle
    for longer than ``max_retry_after`` (read once the pause is in force)."""
    throttle, counts = hook.throttle, []
    original = throttle.pause

    def pause(seconds: float) -> None:
        original(seconds)
        if seconds > hook.settings.max_retry_after:
            counts.append(sandbox.stats.count(endpoint))

    monkeypatch.setattr(throttle, "pause", pause)
    return counts


class _PlannedRetry(Exception):
    """Raised from the retry log to stop a retry that would sleep for real."""


def spy_planned_waits(monkeypatch: pytest.MonkeyPatch, hook: SmsPartnerHook) -> list[float]:
    """The wait tenacity plans before each retry; the first retry is stopped before it sleeps."""
    waits: list[float] = []

    def retry(log, exc, attempt, max_retries, delay) -> None:
        waits.append(delay)
        raise _PlannedRetry

    monkeypatch.setattr(hook._activity, "retry", retry)
    return waits


class TestRetryAfterWithinMaxRetryAfter:
    def test_a_short_retry_after_pauses_and_succeeds(self, monkeypatch, sandbox):
        hook = SmsPartnerHook(own_connection(monkeypatch, sandbox))
        pauses = spy_pauses(monkeypatch, hook)
        sandbox.retry_after = "1"
        sandbox.inject("rate_limit", endpoint="me")
        started = time.monotonic()
        hook.get_account()
        assert pauses == [1.0]
        assert sandbox.stats.count("me") == 2  # the 429, then the retry
        assert time.monotonic() - started >= 0.95  # a lower bound: sleeps are never shorter

    @pytest.mark.parametrize(
        ("extras", "retry_after"),
        [({}, 90.0), ({"max_retry_after": 1000}, 900.0)],
        ids=["90-under-the-default-300", "900-under-max_retry_after-1000"],
    )
    def test_is_waited_in_full_the_60_s_cap_is_gone(self, monkeypatch, sandbox, extras, retry_after):
        # Paused and retried after the whole Retry-After, not 60 s. The retry is stopped before
        # it sleeps; what is checked is what the hook asked for.
        hook = SmsPartnerHook(own_connection(monkeypatch, sandbox, max_retries=1, **extras))
        pauses = spy_pauses(monkeypatch, hook)
        waits = spy_planned_waits(monkeypatch, hook)
        sandbox.retry_after = f"{retry_after:g}"
        sandbox.inject("rate_limit", endpoint="me")
        with pytest.raises(_PlannedRetry):
            hook.get_account()
        assert pauses == waits == [retry_after]
        assert sandbox.stats.count("me") == 1


class TestRetryAfterLongerThanMaxRetryAfter:
    def test_fails_at_once_with_when_to_retry(self, monkeypatch, sandbox):
        conn_id = own_connection(monkeypatch, sandbox, max_retries=5)
        hook = SmsPartnerHook(conn_id)
        pauses = spy_pauses(monkeypatch, hook)
        sandbox.retry_after = "7200"
        sandbox.inject("rate_limit", endpoint="me")
        before = datetime.now(timezone.utc)
        with pytest.raises(SmsPartnerRetryAfterTooLongError) as raised:
            hook.get_account()
        after = datetime.now(timezone.utc)
        assert sandbox.stats.count("me") == 1  # not retried
        # The throttle is paused for the whole wait, so nothing of this connection knocks again.
        assert pauses == [7200.0]
        error = raised.value
        assert isinstance(error, SmsPartnerRateLimitError) and not is_retryable(error)
        assert (error.retry_after, error.max_retry_after, error.conn_id) == (7200.0, 300.0, conn_id)
        assert error.http_status == 429
        assert before + timedelta(seconds=7200) <= error.retry_at <= after + timedelta(seconds=7201)
        assert error.retry_at.tzinfo is not None
        assert re.fullmatch(
            rf"SMS Partner asked to wait 7200 s \(Retry-After\), more than max_retry_after=300 of "
            rf"connection '{conn_id}'; retry after ({WHEN}) or raise max_retry_after\. \(code 429, HTTP 429\)",
            str(error),
        )
        assert error.retry_at_text in str(error)
        assert error.retry_hint == f"retry_after=7200s, retry after {error.retry_at_text}"
        assert TEST_API_KEY not in str(error) + repr(error)

    def test_every_later_request_of_the_connection_fails_at_once_without_reaching_the_api(
        self, monkeypatch, sandbox
    ):
        conn_id = own_connection(monkeypatch, sandbox)
        sandbox.retry_after = "7200"
        sandbox.inject("rate_limit", endpoint="me")
        with pytest.raises(SmsPartnerRetryAfterTooLongError) as first:
            SmsPartnerHook(conn_id).get_account()
        sent = sandbox.stats.total
        started = time.monotonic()
        for call in (
            lambda h: h.get_account(),
            lambda h: h.add_stop("+33655443322"),
            SmsPartnerHook.get_stop_list,
        ):
            with pytest.raises(SmsPartnerRetryAfterTooLongError) as later:
                call(SmsPartnerHook(conn_id))
            assert 7100 < later.value.retry_after <= 7200
            assert abs((later.value.retry_at - first.value.retry_at).total_seconds()) <= 2
        assert time.monotonic() - started < 10  # no waiting (a wide margin for a loaded machine)
        assert sandbox.stats.total == sent
        ok, message = SmsPartnerHook(conn_id).test_connection()
        assert not ok and "retry after" in message

    def test_threads_stop_after_the_requests_in_flight(self, monkeypatch, sandbox):
        # 8 threads adding; the 21st add meets the long Retry-After. Once the hook has paused its
        # throttle, only requests already released by it (at most one per other thread) may
        # still reach the API: counted from that moment, not from when the sandbox sent the 429
        # (other threads may go on until the hook reads the answer, on a loaded machine).
        threads, first_adds = 8, 20
        hook = SmsPartnerHook(own_connection(monkeypatch, sandbox))
        when_paused = count_when_paused(monkeypatch, hook, sandbox, "stop-sms/add")
        sandbox.retry_after = "7200"
        sandbox.inject("rate_limit", endpoint="stop-sms/add", after=first_adds)
        numbers = iter(f"+3364{i:07d}" for i in range(10_000))
        lock = threading.Lock()
        errors: list[BaseException] = []

        def work() -> None:
            while True:
                with lock:
                    number = next(numbers)
                try:
                    hook.add_stop(number)
                except SmsPartnerRetryAfterTooLongError as exc:
                    errors.append(exc)
                    return

        pool = [threading.Thread(target=work) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(60)
        assert not any(thread.is_alive() for thread in pool)
        assert len(errors) == threads
        assert sandbox.stats.rate_limited == 1
        adds = sandbox.stats.count("stop-sms/add")
        assert len(when_paused) == 1 and when_paused[0] >= first_adds + 1
        assert adds - when_paused[0] <= threads - 1
        assert sandbox.stats.adds_applied == adds - 1

    def test_the_limit_is_the_connection_extra(self, monkeypatch, sandbox):
        conn_id = own_connection(monkeypatch, sandbox, max_retry_after=1)
        sandbox.retry_after = "2"
        sandbox.inject("rate_limit", endpoint="me")
        with pytest.raises(SmsPartnerRetryAfterTooLongError, match=r"wait 2 s .*max_retry_after=1 of"):
            SmsPartnerHook(conn_id).get_account()
        assert sandbox.stats.count("me") == 1

    def test_an_http_date_retry_after_counts_too(self, monkeypatch, sandbox):
        from email.utils import format_datetime

        conn_id = own_connection(monkeypatch, sandbox)
        sandbox.retry_after = format_datetime(datetime.now(timezone.utc) + timedelta(hours=3), usegmt=True)
        sandbox.inject("rate_limit", endpoint="me")
        with pytest.raises(SmsPartnerRetryAfterTooLongError) as raised:
            SmsPartnerHook(conn_id).get_account()
        assert 3 * 3600 - 60 < raised.value.retry_after <= 3 * 3600

    def test_survives_pickling(self):
        error = SmsPartnerRetryAfterTooLongError(
            "conn", 7200.0, 300.0, retry_at=datetime(2026, 12, 7, 15, tzinfo=timezone.utc), code=429
        )
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is SmsPartnerRetryAfterTooLongError
        assert str(copy) == str(error)
        assert "retry after 2026-12-07T15:00:00Z or raise max_retry_after." in str(copy)
        assert (copy.retry_after, copy.retry_at, copy.max_retry_after, copy.conn_id, copy.code) == (
            7200.0,
            error.retry_at,
            300.0,
            "conn",
            429,
        )
