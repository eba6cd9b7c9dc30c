"""SmsPartnerHook over real loopback HTTP against the sandbox API."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timezone

import pandas as pd
import pytest

from airflow_provider_smspartner.exceptions import (
    InvalidPhoneNumberError,
    SmsPartnerAuthError,
    SmsPartnerConnectionError,
    SmsPartnerError,
    SmsPartnerRateLimitError,
    SmsPartnerResponseError,
    SmsPartnerServerError,
    StopNotFoundError,
)
from airflow_provider_smspartner.hooks.smspartner import AddStopResult, SmsPartnerHook
from tests.conftest import TEST_API_KEY, smspartner_connection_json
from tests.helpers import free_port, use_connection

ERROR_STYLES = pytest.mark.parametrize(
    "error_style", ["http_4xx", "http_200"], ids=["4xx-style", "200-style"]
)


class TestStopList:
    def test_get_stop_list_matches_server_state(self, smspartner_conn, sandbox):
        entries = SmsPartnerHook().get_stop_list()
        expected = {(stop_id, phone, created) for stop_id, phone, created in sandbox.state.list_entries()}
        assert {(e.stop_id, e.phone_number, e.created_at) for e in entries} == expected
        assert all(
            e.created_at.tzinfo is not None and e.created_at.utcoffset().total_seconds() == 0 for e in entries
        )

    def test_get_stop_list_df_columns_and_types(self, smspartner_conn, sandbox):
        frame = SmsPartnerHook().get_stop_list_df()
        assert list(frame.columns) == ["stop_id", "phone_number", "phone_e164", "created_at"]
        assert len(frame) == len(sandbox.state)
        assert frame["stop_id"].dtype == "int64"
        assert str(frame["created_at"].dt.tz) == "UTC"
        assert (frame["phone_e164"] == frame["phone_number"]).all()

    def test_created_at_is_read_in_api_timezone(self, monkeypatch, sandbox):
        from datetime import datetime

        sandbox.state.clear()
        sandbox.state.seed_numbers([("+33612345678", datetime(2024, 7, 1, 8, 0, tzinfo=timezone.utc))])
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url))
        (entry,) = SmsPartnerHook().get_stop_list()
        assert entry.created_at == datetime(2024, 7, 1, 8, 0, tzinfo=timezone.utc)

    def test_empty_list(self, smspartner_conn, sandbox):
        sandbox.state.clear()
        frame = SmsPartnerHook().get_stop_list_df()
        assert frame.empty
        assert list(frame.columns) == ["stop_id", "phone_number", "phone_e164", "created_at"]

    def test_truncated_list_is_refused(self, smspartner_conn, sandbox):
        sandbox.inject("truncated_list", count=4, endpoint="stop-sms/list")  # more than max_retries=3
        with pytest.raises(SmsPartnerResponseError, match=r"incomplete list: nbData=5 but 4 rows"):
            SmsPartnerHook().get_stop_list()

    def test_truncated_list_once_is_retried(self, smspartner_conn, sandbox):
        sandbox.inject("truncated_list", count=1, endpoint="stop-sms/list")
        assert len(SmsPartnerHook().get_stop_list()) == 5
        assert sandbox.stats.count("stop-sms/list") == 2


class TestAddAndRemove:
    def test_add_then_already_present(self, smspartner_conn, sandbox):
        hook = SmsPartnerHook()
        first = hook.add_stop("+33611223344")
        assert first.status == "added" and isinstance(first.stop_id, int)
        assert hook.add_stop("+33611223344") == AddStopResult("already_present", None, "+33611223344")
        assert "+33611223344" in sandbox.state.phone_numbers()

    def test_add_french_national_form(self, smspartner_conn, sandbox):
        result = SmsPartnerHook().add_stop("0611223355")
        assert result.status == "added"
        assert "+33611223355" in sandbox.state.phone_numbers()

    def test_remove(self, smspartner_conn, sandbox):
        hook = SmsPartnerHook()
        stop_id = hook.add_stop("+33611223366").stop_id
        assert stop_id is not None
        hook.remove_stop(stop_id)
        assert "+33611223366" not in sandbox.state.phone_numbers()

    def test_remove_requires_int(self, smspartner_conn):
        with pytest.raises(TypeError, match="stop_id must be an int"):
            SmsPartnerHook().remove_stop("12")  # type: ignore[arg-type]

    def test_get_account(self, smspartner_conn):
        account = SmsPartnerHook().get_account()
        assert "credits" in account and "success" not in account

    def test_test_connection_ok(self, smspartner_conn, sandbox):
        ok, message = SmsPartnerHook().test_connection()
        assert ok, message
        assert sandbox.base_url in message


class TestApiErrors:
    @ERROR_STYLES
    def test_code_3_on_add_is_already_present(self, smspartner_conn, sandbox, error_style):
        sandbox.error_style = error_style
        listed = sandbox.state.list_entries()[0][1]
        assert SmsPartnerHook().add_stop(listed) == AddStopResult("already_present", None, listed)
        assert sandbox.stats.total == 1

    @ERROR_STYLES
    @pytest.mark.parametrize(
        "call",
        [
            lambda h: h.get_stop_list(),
            lambda h: h.add_stop("+33611111111"),
            lambda h: h.remove_stop(1),
            lambda h: h.get_account(),
        ],
        ids=["list", "add", "delete", "me"],
    )
    def test_wrong_key_is_auth_error_code_10_without_retry(self, monkeypatch, sandbox, error_style, call):
        sandbox.error_style = error_style
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url, api_key="wrong-key-123456"))
        with pytest.raises(SmsPartnerAuthError) as excinfo:
            call(SmsPartnerHook())
        assert excinfo.value.code == 10
        assert excinfo.value.http_status == (401 if error_style == "http_4xx" else 200)
        assert sandbox.stats.total == 1  # never retried

    @ERROR_STYLES
    def test_missing_key_is_auth_error_code_1(self, smspartner_conn, sandbox, error_style):
        sandbox.error_style = error_style
        # The hook never sends an empty key itself; override the parameter to reach the API's check.
        with pytest.raises(SmsPartnerAuthError) as excinfo:
            SmsPartnerHook()._request("GET", "me", {"apiKey": ""})
        assert excinfo.value.code == 1

    @ERROR_STYLES
    @pytest.mark.parametrize(
        ("number", "code"), [("not-a-number", 9), ("", 2), ("+0123", 9)], ids=["letters", "empty", "bad-cc"]
    )
    def test_invalid_number_is_not_retried(self, smspartner_conn, sandbox, error_style, number, code):
        sandbox.error_style = error_style
        with pytest.raises(InvalidPhoneNumberError) as excinfo:
            SmsPartnerHook().add_stop(number)
        assert excinfo.value.code == code
        assert sandbox.stats.total == 1

    @ERROR_STYLES
    def test_unknown_stop_id_is_stop_not_found(self, smspartner_conn, sandbox, error_style):
        sandbox.error_style = error_style
        with pytest.raises(StopNotFoundError) as excinfo:
            SmsPartnerHook().remove_stop(999_999)
        assert excinfo.value.code == 4
        assert excinfo.value.http_status == (404 if error_style == "http_4xx" else 200)

    @ERROR_STYLES
    def test_delete_without_id_is_code_3_error(self, smspartner_conn, sandbox, error_style):
        sandbox.error_style = error_style
        with pytest.raises(SmsPartnerError) as excinfo:
            SmsPartnerHook()._request("GET", "stop-sms/delete")
        assert excinfo.value.code == 3
        assert not isinstance(excinfo.value, StopNotFoundError)


class TestRetries:
    @pytest.mark.parametrize("fault", ["server_error", "bad_gateway", "drop", "malformed"])
    def test_transient_fault_is_retried(self, smspartner_conn, sandbox, fault):
        sandbox.inject(fault, count=2, endpoint="me")
        SmsPartnerHook().get_account()
        assert sandbox.stats.count("me") == 3

    @pytest.mark.parametrize(
        ("fault", "error", "status"),
        [
            ("server_error", SmsPartnerServerError, 500),
            ("drop", SmsPartnerConnectionError, None),
            ("malformed", SmsPartnerResponseError, 200),
            ("rate_limit", SmsPartnerRateLimitError, 429),
        ],
        ids=["500", "drop", "malformed", "429"],
    )
    def test_gives_up_after_max_retries(self, monkeypatch, sandbox, fault, error, status):
        sandbox.retry_after = "0"
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url, max_retries=2))
        sandbox.inject(fault, count=3, endpoint="me")
        with pytest.raises(error) as excinfo:
            SmsPartnerHook().get_account()
        assert excinfo.value.http_status == status
        assert sandbox.stats.count("me") == 3  # 1 attempt + 2 retries

    def test_server_error_message_carries_status_and_snippet(self, monkeypatch, sandbox):
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url, max_retries=0))
        sandbox.inject("server_error", count=1, endpoint="me")
        with pytest.raises(SmsPartnerServerError, match=r"500 Internal Server Error.*HTTP 500"):
            SmsPartnerHook().get_account()

    def test_429_honours_retry_after(self, smspartner_conn, sandbox):
        sandbox.retry_after = "1"
        sandbox.inject("rate_limit", count=1, endpoint="me")
        started = time.monotonic()
        SmsPartnerHook().get_account()
        # A lower bound only: sleeping is never shorter than asked, so this cannot flake.
        assert time.monotonic() - started >= 0.95
        assert sandbox.stats.count("me") == 2

    def test_lost_add_response_reports_already_present(self, smspartner_conn, sandbox):
        sandbox.inject("lost_response", count=1, endpoint="stop-sms/add")
        result = SmsPartnerHook().add_stop("+33699887766")
        assert result.status == "already_present"
        assert sorted(sandbox.state.phone_numbers()).count("+33699887766") == 1
        assert sandbox.stats.adds_applied == 1

    def test_timeout_is_retried(self, monkeypatch, sandbox):
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url, timeout=0.3, max_retries=1))
        sandbox.slow_seconds = 1.5
        sandbox.inject("slow", count=1, endpoint="me")
        SmsPartnerHook().get_account()
        assert sandbox.stats.count("me") == 2

    def test_connection_refused(self, monkeypatch):
        url = f"http://127.0.0.1:{free_port()}/v1"
        use_connection(monkeypatch, smspartner_connection_json(url, max_retries=1))
        with pytest.raises(SmsPartnerConnectionError, match="connection failed"):
            SmsPartnerHook().get_account()


class TestThrottle:
    def test_requests_per_second_is_respected_across_threads(self, monkeypatch, sandbox):
        rate, calls = 20, 40
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url, requests_per_second=rate))
        hook = SmsPartnerHook()
        hook.get_conn()
        sandbox.reset_stats()
        started = time.monotonic()
        threads = [
            threading.Thread(target=lambda: [hook.get_account() for _ in range(calls // 4)]) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        times = sorted(t for t, _ in sandbox.stats.timestamps)
        assert len(times) == calls
        # Spacing is enforced before sending, so the elapsed time has a hard lower bound.
        assert elapsed >= (calls - 1) / rate * 0.95
        # No one-second window holds more than the rate (+1 for window edges and network jitter).
        worst = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
        assert worst <= rate + 1


class TestSecrets:
    def test_api_key_never_leaks(self, monkeypatch, sandbox, capfd, caplog):
        caplog.set_level(logging.DEBUG)
        for name in ("urllib3", "urllib3.connectionpool", "airflow"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        texts: list[str] = []
        sandbox.retry_after = "0"
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url, max_retries=2))
        hook = SmsPartnerHook()
        texts.append(repr(hook))
        texts.append(repr(hook.settings))
        hook.get_stop_list()
        hook.add_stop("+33655443322")
        for fault in ("server_error", "drop", "rate_limit", "malformed"):
            sandbox.inject(fault, count=1, endpoint="me")
            hook.get_account()
        sandbox.inject("server_error", count=3, endpoint="me")
        with pytest.raises(SmsPartnerServerError) as server_error:
            hook.get_account()
        texts += [str(server_error.value), repr(server_error.value)]
        with pytest.raises(InvalidPhoneNumberError) as invalid:
            hook.add_stop("abc")
        texts += [str(invalid.value), repr(invalid.value)]
        texts.append(hook.test_connection()[1])

        # A refused key and an unreachable host: both error paths format URLs.
        sandbox.api_key = "another-key-entirely"
        with pytest.raises(SmsPartnerAuthError) as auth:
            hook.get_account()
        texts += [str(auth.value), repr(auth.value), hook.test_connection()[1]]
        use_connection(monkeypatch, smspartner_connection_json(f"http://127.0.0.1:{free_port()}/v1"), "down")
        down = SmsPartnerHook("down")
        with pytest.raises(SmsPartnerConnectionError) as refused:
            down.get_account()
        texts += [str(refused.value), repr(refused.value), down.test_connection()[1]]

        captured = capfd.readouterr()
        texts += [captured.out, captured.err, caplog.text]
        texts += [record.getMessage() for record in caplog.records]
        assert any("/v1/stop-sms/list" in record.getMessage() for record in caplog.records), (
            "urllib3 DEBUG not captured"
        )
        leaks = [text for text in texts if TEST_API_KEY in text]
        assert leaks == []

    def test_connection_error_does_not_chain_original_exception(self, monkeypatch):
        use_connection(
            monkeypatch, smspartner_connection_json(f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
        )
        with pytest.raises(SmsPartnerConnectionError) as excinfo:
            SmsPartnerHook().get_account()
        assert excinfo.value.__cause__ is None
        assert excinfo.value.__context__ is None


def test_dataframe_types_are_arrow_friendly(smspartner_conn):
    frame = SmsPartnerHook().get_stop_list_df()
    import pyarrow as pa

    table = pa.Table.from_pandas(frame)
    assert table.num_rows == len(frame)
    assert isinstance(frame, pd.DataFrame)
