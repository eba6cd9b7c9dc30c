"""parse_response: the mapping from (endpoint, HTTP status, body) to data or typed errors.

The sandbox cannot produce every code the API documents (20, 30, 40, 96...), so these corners are
checked on the parser directly; the main paths go over HTTP in test_smspartner.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from airflow_provider_smspartner.api.contract import (
    MAX_STOP_ID,
    check_list_body,
    decode_json,
    describe,
    parse_response,
    parse_retry_after,
    redirect_error,
)
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


class TestStrictContract:
    """The success shape is exact; nothing is coerced (the HTTP tests are in tests/hooks/test_fail_closed.py)."""

    ADD_OK = {"success": True, "code": 200, "stopId": 300}

    def test_documented_successes(self):
        assert parse_response("stop-sms/add", 200, {}, json.dumps(self.ADD_OK))["stopId"] == 300
        assert parse_response("stop-sms/delete", 200, {}, b'{"success":true,"code":200}')["code"] == 200
        body = {
            "success": True,
            "code": 200,
            "nbData": 1,
            "data": [{"id": 1, "phoneNumber": "+336", "createdAt": "2015-07-20 10:19:45"}],
        }
        assert parse_response("stop-sms/list", 200, {}, json.dumps(body).encode()) == body

    @pytest.mark.parametrize(
        ("change", "names"),
        [
            ({"success": "true"}, "'success'"),
            ({"success": 1}, "'success'"),
            ({"success": None}, "'success'"),
            ({"code": "200"}, "'code'"),
            ({"code": 200.0}, "'code'"),
            ({"code": True}, "'code'"),
            ({"stopId": 12.7}, "'stopId'"),
            ({"stopId": 12.0}, "'stopId'"),
            ({"stopId": True}, "'stopId'"),
            ({"stopId": "300"}, "'stopId'"),
            ({"stopId": 0}, "'stopId'"),
            ({"stopId": MAX_STOP_ID + 1}, "'stopId'"),
        ],
        ids=lambda value: json.dumps(value) if isinstance(value, dict) else value,
    )
    def test_wrong_types_are_refused_not_coerced(self, change, names):
        with pytest.raises(SmsPartnerResponseError, match="stop-sms/add: untrustworthy answer") as excinfo:
            parse_response("stop-sms/add", 200, {}, json.dumps({**self.ADD_OK, **change}))
        assert names in str(excinfo.value)
        assert excinfo.value.http_status == 200

    @pytest.mark.parametrize("status", [200, 400, 401])
    def test_a_code_as_text_still_classifies_an_error(self, status):
        # Reading "10" as 10 only ever makes an answer an error: here one that stops a bulk run.
        with pytest.raises(SmsPartnerAuthError) as excinfo:
            parse_response("stop-sms/add", status, {}, json.dumps({"success": False, "code": "10"}))
        assert excinfo.value.code == 10

    def test_a_code_as_text_is_never_accepted_nor_a_success(self):
        with pytest.raises(SmsPartnerResponseError, match="code 3 must be a JSON integer"):
            parse_response(
                "stop-sms/add", 200, {}, json.dumps({"success": False, "code": "3"}), accept_codes=(3,)
            )
        with pytest.raises(SmsPartnerResponseError, match="'code' must be the integer 200"):
            parse_response("me", 200, {}, json.dumps({"success": True, "code": "200"}))

    def test_largest_stop_id_is_accepted(self):
        body = json.dumps({**self.ADD_OK, "stopId": MAX_STOP_ID})
        assert parse_response("stop-sms/add", 200, {}, body)["stopId"] == MAX_STOP_ID

    def test_accepted_code_needs_success_false(self):
        assert parse_response("stop-sms/add", 200, {}, _error(3), accept_codes=(3,))["code"] == 3
        with pytest.raises(
            SmsPartnerResponseError, match="code 3 must be a JSON integer and come with 'success' false"
        ):
            parse_response("stop-sms/add", 400, {}, json.dumps({"code": 3}), accept_codes=(3,))

    @pytest.mark.parametrize("status", [401, 403])
    @pytest.mark.parametrize("body", ["", "<html>Unauthorized</html>", '{"message": "no"}', '{"code": null}'])
    def test_401_403_without_code_is_auth_error(self, status, body):
        with pytest.raises(SmsPartnerAuthError, match="without an API code") as excinfo:
            parse_response("stop-sms/add", status, {}, body)
        assert (excinfo.value.code, excinfo.value.http_status) == (None, status)

    @pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
    def test_any_3xx_is_refused(self, status):
        with pytest.raises(
            SmsPartnerConfigError, match=rf"redirect \(HTTP {status}\) to host 'evil.example:8443'"
        ):
            parse_response("me", status, {"Location": "https://evil.example:8443/v1/me?apiKey=k"}, "")

    def test_redirect_error_names_host_only_and_the_connection(self):
        message = str(redirect_error("me", 302, "http://user:pw@evil.example/path?apiKey=secret", "my_conn"))
        assert "evil.example" in message and "'my_conn'" in message
        assert "secret" not in message and "pw" not in message and "/path" not in message

    @pytest.mark.parametrize(
        ("content", "why"),
        [
            (b"\xc3\x28", "not valid UTF-8"),
            (b"", "empty body"),
            (b"   ", "empty body"),
            (b'{"a": NaN}', "NaN is not a JSON value"),
            (b'{"a": -Infinity}', "-Infinity is not a JSON value"),
            (b'{"a": 1, "a": 2}', "appears twice"),
            (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
            (b"1" * 5000, "not valid JSON"),
            (b"\xef\xbb\xbf{}", "not valid JSON"),
            (b"{} {}", "not valid JSON"),
        ],
        ids=[
            "utf8",
            "empty",
            "blank",
            "nan",
            "infinity",
            "duplicate",
            "nested",
            "huge-int",
            "bom",
            "two-documents",
        ],
    )
    def test_decode_json_refuses(self, content, why):
        value, problem = decode_json(content)
        assert value is None and why in problem

    def test_describe(self):
        assert describe("abc") == 'the string "abc"'
        assert describe(12.7) == "the number 12.7"
        assert describe(True) == "the boolean true"
        assert describe([1, 2]) == "an array of 2 item(s)"
        assert describe(None) == "null"
        assert "digits" in describe(10**400)

    def test_list_rows(self):
        with pytest.raises(SmsPartnerResponseError, match=r"row 1: 'id' must be an integer"):
            check_list_body(
                {
                    "nbData": 2,
                    "data": [
                        {"id": 1, "phoneNumber": "+336", "createdAt": "2015-07-20 10:19:45"},
                        {"id": 12.7, "phoneNumber": "+336", "createdAt": "2015-07-20 10:19:45"},
                    ],
                }
            )

    def test_echoed_key_is_redacted_in_values_too(self):
        register_secret("a-key-of-more-than-sixty-characters-" + "x" * 40)
        body = json.dumps({**self.ADD_OK, "stopId": "a-key-of-more-than-sixty-characters-" + "x" * 40})
        with pytest.raises(SmsPartnerResponseError) as excinfo:
            parse_response("stop-sms/add", 200, {}, body)
        assert "a-key-of-more-than-sixty" not in str(excinfo.value)


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [("3", 3.0), ("0", 0.0), ("", None), ("soon", None), ("nan", None), ("inf", None)],
    )
    def test_seconds(self, value, expected):
        assert parse_retry_after(value) == expected

    def test_http_date(self):
        when = datetime.now(timezone.utc) + timedelta(seconds=30)
        assert 20 <= parse_retry_after(format_datetime(when, usegmt=True)) <= 31
