"""parse_response: the mapping from (endpoint, HTTP status, body) to data or typed errors.

The sandbox cannot produce every code the API documents (20, 30, 40, 96...), so these corners are
checked on the parser directly; the main paths go over HTTP in test_smspartner.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from airflow_provider_smspartner.exceptions import (
    InvalidPhoneNumberError,
    SmsPartnerAuthError,
    SmsPartnerError,
    SmsPartnerRateLimitError,
    SmsPartnerResponseError,
    SmsPartnerServerError,
    StopNotFoundError,
)
from airflow_provider_smspartner.utils.api import parse_response, parse_retry_after
from airflow_provider_smspartner.utils.redaction import register_secret


def _error(code: int, message: str = "boom") -> str:
    return json.dumps({"success": False, "code": code, "message": message})


class TestParseResponse:
    @pytest.mark.parametrize("code", [1, 10, 20, 30, 40, 96], ids=lambda c: f"code-{c}")
    @pytest.mark.parametrize("status", [200, 401, 403], ids=["200", "401", "403"])
    def test_auth_codes(self, code, status):
        with pytest.raises(SmsPartnerAuthError) as excinfo:
            parse_response("me", status, {}, _error(code))
        assert (excinfo.value.code, excinfo.value.http_status) == (code, status)

    def test_code_3_is_accepted_on_add_only(self):
        body = parse_response("stop-sms/add", 400, {}, _error(3), accept_codes=(3,))
        assert body["code"] == 3
        with pytest.raises(SmsPartnerError) as excinfo:
            parse_response("stop-sms/delete", 400, {}, _error(3))
        assert excinfo.value.code == 3

    def test_code_4_means_not_found_on_delete(self):
        with pytest.raises(StopNotFoundError):
            parse_response("stop-sms/delete", 404, {}, _error(4))
        with pytest.raises(SmsPartnerError) as excinfo:
            parse_response("stop-sms/list", 400, {}, _error(4))
        assert not isinstance(excinfo.value, StopNotFoundError)

    @pytest.mark.parametrize(("code", "endpoint"), [(9, "stop-sms/add"), (2, "stop-sms/add")], ids=["9", "2"])
    def test_invalid_number(self, code, endpoint):
        with pytest.raises(InvalidPhoneNumberError):
            parse_response(endpoint, 400, {}, _error(code))

    def test_validation_error_list_under_error_or_errors(self):
        for key in ("error", "errors"):
            body = json.dumps(
                {"success": False, "code": 9, key: [{"elementId": "x", "message": "bad number"}]}
            )
            with pytest.raises(InvalidPhoneNumberError, match="bad number"):
                parse_response("stop-sms/add", 400, {}, body)

    def test_success_false_with_code_200_is_a_failure(self):
        with pytest.raises(SmsPartnerError):
            parse_response("me", 200, {}, json.dumps({"success": False, "code": 200}))

    def test_429_reads_retry_after(self):
        with pytest.raises(SmsPartnerRateLimitError) as excinfo:
            parse_response("me", 429, {"Retry-After": "7"}, "")
        assert excinfo.value.retry_after == 7.0

    def test_5xx_with_html_body(self):
        with pytest.raises(SmsPartnerServerError, match="Bad Gateway"):
            parse_response("me", 502, {}, "<html><h1>502 Bad Gateway</h1></html>")

    def test_non_json_2xx_is_retryable_response_error(self):
        with pytest.raises(SmsPartnerResponseError, match="expected a JSON object"):
            parse_response("me", 200, {}, '{"success": tru')

    def test_non_json_4xx_is_plain_error_with_snippet(self):
        with pytest.raises(SmsPartnerError, match="Not Found") as excinfo:
            parse_response("nope", 404, {}, "<html>Not Found</html>")
        assert type(excinfo.value) is SmsPartnerError

    def test_secret_echoed_by_the_server_is_redacted(self):
        register_secret("echoed-secret-123456")
        with pytest.raises(SmsPartnerError) as excinfo:
            parse_response("me", 500, {}, "<html>key=echoed-secret-123456</html>")
        assert "echoed-secret-123456" not in str(excinfo.value)


class TestRetryAfter:
    @pytest.mark.parametrize(("value", "expected"), [("3", 3.0), ("0", 0.0), ("", None), ("soon", None)])
    def test_seconds(self, value, expected):
        assert parse_retry_after(value) == expected

    def test_http_date(self):
        when = datetime.now(timezone.utc) + timedelta(seconds=30)
        assert 20 <= parse_retry_after(format_datetime(when, usegmt=True)) <= 31
