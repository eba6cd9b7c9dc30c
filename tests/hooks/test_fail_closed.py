"""Issue 10, "fail closed": odd, hostile and slow answers, each over real loopback HTTP.

The suppression table stands between an opted-out person and the next campaign, so the hook must
never return an empty list or report ``added`` on an answer it does not understand, never send the
key anywhere but the configured host, never wait longer than its timeout, and stop every thread
of a connection when the API says 429 with ``Retry-After``. Odd answers come from the sandbox's
scripted answers (``respond``, ``redirect``, the ``trickle`` fault); "another host" and a server
trickling its headers are ``tests.helpers.LoopbackServer``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from urllib.parse import quote, quote_plus

import pandas as pd
import pytest
import requests

from airflow_provider_smspartner.bulk.outcomes import CallOutcome
from airflow_provider_smspartner.bulk.progress import ProgressReporter
from airflow_provider_smspartner.bulk.runner import run_calls
from airflow_provider_smspartner.exceptions import (
    InvalidPhoneNumberError,
    SmsPartnerAuthError,
    SmsPartnerConfigError,
    SmsPartnerConnectionError,
    SmsPartnerResponseError,
    SmsPartnerServerError,
)
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.sandbox import SandboxServer
from tests.conftest import TEST_API_KEY, smspartner_connection_json
from tests.helpers import LoopbackServer, RecordingLogger, use_connection

#: The test connection's max_retries (conftest) + the first attempt.
ATTEMPTS = 4
ROW = '{"id": 7, "phoneNumber": "+33612345678", "createdAt": "2024-05-01 10:00:00"}'


def _list_body(nb_data: str = "1", rows: str = ROW, head: str = '"success": true, "code": 200') -> bytes:
    return f'{{{head}, "nbData": {nb_data}, "data": [{rows}]}}'.encode()


def _row(**fields: str) -> str:
    values = {"id": "7", "phoneNumber": '"+33612345678"', "createdAt": '"2024-05-01 10:00:00"', **fields}
    return "{" + ", ".join(f'"{k}": {v}' for k, v in values.items() if v != "MISSING") + "}"


def _multiline(body: bytes) -> bytes:
    # A newline inside the document keeps Arrow's one-line reader out: the generic parser decides.
    return body.replace(b"{", b"{\n", 1)


LAYOUTS = pytest.mark.parametrize(
    "layout", [lambda body: body, _multiline], ids=["one-line(arrow)", "multi-line(json)"]
)

#: List answers that must end in a typed error: (id, body, what the message names).
ODD_LISTS = [
    ("empty-object", b"{}", "'success'"),
    ("success-and-code-only", b'{"success": true, "code": 200}', "'data'"),
    ("success-string-false", b'{"success": "false", "code": 200, "nbData": 0, "data": []}', "'success'"),
    ("success-string-true", b'{"success": "true", "code": 200, "nbData": 0, "data": []}', "'success'"),
    ("success-one", b'{"success": 1, "code": 200, "nbData": 0, "data": []}', "'success'"),
    ("nulls", b'{"nbData": null, "data": null}', "'success'"),
    ("nulls-with-success", b'{"success": true, "code": 200, "nbData": null, "data": null}', "'data'"),
    ("data-null", b'{"success": true, "code": 200, "nbData": 0, "data": null}', "'data'"),
    ("code-string", b'{"success": true, "code": "200", "nbData": 0, "data": []}', "'code'"),
    ("code-float", b'{"success": true, "code": 200.0, "nbData": 0, "data": []}', "'code'"),
    ("code-missing", b'{"success": true, "nbData": 0, "data": []}', "'code'"),
    ("nbData-abc", _list_body(nb_data='"abc"'), "'nbData'"),
    ("nbData-array", _list_body(nb_data="[1]"), "'nbData'"),
    ("nbData-negative", b'{"success": true, "code": 200, "nbData": -1, "data": []}', "'nbData'"),
    ("nbData-float", _list_body(nb_data="1.0"), "'nbData'"),
    ("nbData-missing", b'{"success": true, "code": 200, "data": []}', "'nbData'"),
    ("nbData-too-big", _list_body(nb_data="2"), "incomplete list: nbData=2 but 1 rows"),
    ("id-beyond-int64", _list_body(rows=_row(id="9223372036854775808")), "'id'"),
    ("id-fractional", _list_body(rows=_row(id="12.7")), "'id'"),
    ("id-integral-float", _list_body(rows=_row(id="12.0")), "'id'"),
    ("id-exponent", _list_body(rows=_row(id="1e3")), "'id'"),
    ("id-string", _list_body(rows=_row(id='"12"')), "'id'"),
    ("id-boolean", _list_body(rows=_row(id="true")), "'id'"),
    ("id-zero", _list_body(rows=_row(id="0")), "'id'"),
    ("id-negative", _list_body(rows=_row(id="-5")), "'id'"),
    ("id-missing", _list_body(rows=_row(id="MISSING")), "'id'"),
    ("phone-number-as-number", _list_body(rows=_row(phoneNumber="33612345678")), "'phoneNumber'"),
    ("phone-null", _list_body(rows=_row(phoneNumber="null")), "'phoneNumber'"),
    ("phone-lone-surrogate", _list_body(rows=_row(phoneNumber='"\\ud800"')), "'phoneNumber'"),
    ("createdAt-missing", _list_body(rows=_row(createdAt="MISSING")), "'createdAt'"),
    ("createdAt-iso", _list_body(rows=_row(createdAt='"2024-05-01T10:00:00Z"')), "'createdAt'"),
    ("createdAt-number", _list_body(rows=_row(createdAt="1714557600")), "'createdAt'"),
    ("row-null", _list_body(rows="null"), "a row must be an object"),
    ("row-array", _list_body(rows="[7]"), "a row must be an object"),
    ("invalid-utf8", _list_body(rows=_row(phoneNumber='"+3361@@"')).replace(b"@@", b"\xff\xfe"), "UTF-8"),
    (
        "deeply-nested",
        b'{"success": true, "code": 200, "nbData": 1, "data": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
        "nested too deeply",
    ),
    ("duplicate-key", b'{"success": false, "success": true, "code": 200, "nbData": 0, "data": []}', "twice"),
    ("nan", b'{"success": true, "code": 200, "nbData": NaN, "data": []}', "not valid JSON"),
    ("two-documents", b'{"success": true, "code": 200, "nbData": 0, "data": []} {}', "not valid JSON"),
    ("array", b"[]", "expected a JSON object"),
    ("null", b"null", "expected a JSON object"),
    ("zero", b"0", "expected a JSON object"),
    ("empty", b"", "empty body"),
    ("cut-short", b'{"success": tru', "not valid JSON"),
    ("success-true-code-3", b'{"success": true, "code": 3, "nbData": 0, "data": []}', "'code'"),
]

#: Add answers that must never be reported ``added`` (nor ``already_present``).
ODD_ADDS = [
    ("empty-object", b"{}", "'success'"),
    ("success-string-false", b'{"success": "false", "code": 200, "stopId": 5}', "'success'"),
    ("zero", b"0", "expected a JSON object"),
    ("null", b"null", "expected a JSON object"),
    ("stopId-null", b'{"success": true, "code": 200, "stopId": null}', "'stopId'"),
    ("stopId-missing", b'{"success": true, "code": 200}', "'stopId'"),
    ("stopId-zero", b'{"success": true, "code": 200, "stopId": 0}', "'stopId'"),
    ("stopId-fractional", b'{"success": true, "code": 200, "stopId": 12.7}', "'stopId'"),
    ("stopId-string", b'{"success": true, "code": 200, "stopId": "12"}', "'stopId'"),
    ("stopId-beyond-int64", b'{"success": true, "code": 200, "stopId": 9223372036854775808}', "'stopId'"),
    ("code-3-with-success-true", b'{"success": true, "code": 3}', "'code'"),
    ("code-3-with-success-string", b'{"success": "false", "code": 3}', "'success'"),
    ("code-3-without-success", b'{"code": 3}', "'success'"),
    ("code-string-3", b'{"success": false, "code": "3"}', "code 3 must be a JSON integer"),
    ("invalid-utf8", b'{"success": true, "code": 200, "stopId": 5, "message": "\xff"}', "UTF-8"),
    ("deeply-nested", b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
]


#: ``createdAt`` values no list may hold (as read in the default zone, Europe/Paris).
IMPOSSIBLE_DATES = {
    "year-0000": "0000-01-01 00:00:00",
    "month-13": "2024-13-01 00:00:00",
    "month-00": "2024-00-10 00:00:00",
    "day-32": "2024-01-32 00:00:00",
    "day-00": "2024-01-00 00:00:00",
    "feb-30": "2024-02-30 12:00:00",
    "feb-29-not-leap": "2023-02-29 12:00:00",
    "hour-25": "2024-01-01 25:00:00",
    "hour-24": "2024-01-01 24:00:00",
    "minute-60": "2024-01-01 23:60:00",
    "second-60": "2024-01-01 23:59:60",
    # Paris was UTC+0:09:21 then: year 0 in UTC.
    "utc-before-year-1": "0001-01-01 00:00:00",
}


@pytest.fixture
def hook(smspartner_conn) -> SmsPartnerHook:
    return SmsPartnerHook(smspartner_conn)


class TestResponseContract:
    @LAYOUTS
    @pytest.mark.parametrize(
        ("body", "names"), [case[1:] for case in ODD_LISTS], ids=[c[0] for c in ODD_LISTS]
    )
    def test_odd_list_answer_is_a_typed_error_after_retries(self, hook, sandbox, layout, body, names):
        sandbox.respond(layout(body), endpoint="stop-sms/list", count=None)
        for fetch in (hook.get_stop_list, hook.get_stop_list_df):
            sandbox.reset_stats()
            with pytest.raises(SmsPartnerResponseError, match="stop-sms/list") as excinfo:
                fetch()
            assert names in str(excinfo.value)
            assert sandbox.stats.count("stop-sms/list") == ATTEMPTS

    @LAYOUTS
    def test_unknown_extra_fields_are_fine(self, hook, sandbox, layout):
        row = _row(extra='{"nested": [1, {"deep": null}]}', note='"x"')
        body = _list_body(rows=row, head='"success": true, "code": 200, "version": "2", "meta": {"a": []}')
        sandbox.respond(layout(body), endpoint="stop-sms/list")
        (entry,) = hook.get_stop_list()
        assert (entry.stop_id, entry.phone_number) == (7, "+33612345678")

    @LAYOUTS
    def test_largest_int64_id_is_kept(self, hook, sandbox, layout):
        sandbox.respond(layout(_list_body(rows=_row(id=str(2**63 - 1)))), endpoint="stop-sms/list")
        assert hook.get_stop_list_df()["stop_id"].tolist() == [2**63 - 1]

    @LAYOUTS
    @pytest.mark.parametrize("value", IMPOSSIBLE_DATES.values(), ids=IMPOSSIBLE_DATES.keys())
    def test_impossible_date_is_a_contract_error_naming_it(self, hook, sandbox, layout, value):
        body = _list_body(nb_data="2", rows=f"{ROW}, {_row(id='8', createdAt=json.dumps(value))}")
        sandbox.respond(layout(body), endpoint="stop-sms/list", count=None)
        for fetch in (hook.get_stop_list, hook.get_stop_list_df):
            with pytest.raises(SmsPartnerResponseError, match="'createdAt'") as excinfo:
                fetch()
            assert value in str(excinfo.value)

    @LAYOUTS
    def test_the_last_second_of_year_9999_is_a_date(self, hook, sandbox, layout):
        """Paris is ahead of UTC: its 9999-12-31 23:59:59 is 22:59:59 UTC, which a ``datetime``
        (``StopEntry.created_at``, the warehouse drivers) holds."""
        sandbox.respond(layout(_list_body(rows=_row(createdAt='"9999-12-31 23:59:59"'))), count=None)
        if pd.__version__ < "3":
            # pandas 2 (the Airflow 3.2 floor) times are nanoseconds: nothing past 2262 fits. Such a
            # date is refused as a contract error naming it, never read as another date.
            with pytest.raises(
                SmsPartnerResponseError, match=r"stop id 7: 'createdAt' .*9999-12-31 23:59:59"
            ):
                hook.get_stop_list_df()
            return
        expected = pd.Timestamp("9999-12-31 22:59:59", tz="UTC")
        assert hook.get_stop_list_df()["created_at"].tolist() == [expected]
        assert hook.get_stop_list()[0].created_at == expected.to_pydatetime()

    @LAYOUTS
    def test_a_utc_instant_past_year_9999_is_refused(self, monkeypatch, sandbox, layout):
        """New York is behind UTC: its 9999-12-31 23:59:59 falls in year 10000 in UTC."""
        use_connection(
            monkeypatch, smspartner_connection_json(sandbox.base_url, api_timezone="America/New_York")
        )
        sandbox.respond(layout(_list_body(rows=_row(createdAt='"9999-12-31 23:59:59"'))), count=None)
        with pytest.raises(SmsPartnerResponseError, match=r"stop id 7: 'createdAt' .*9999-12-31 23:59:59"):
            SmsPartnerHook().get_stop_list_df()

    def test_odd_answer_once_is_retried(self, hook, sandbox):
        sandbox.respond(b'{"nbData": null, "data": null}', endpoint="stop-sms/list")
        assert len(hook.get_stop_list()) == len(sandbox.state) == 5
        assert sandbox.stats.count("stop-sms/list") == 2

    @pytest.mark.parametrize(("body", "names"), [case[1:] for case in ODD_ADDS], ids=[c[0] for c in ODD_ADDS])
    def test_odd_add_answer_is_never_reported_added(self, hook, sandbox, body, names):
        sandbox.respond(body, endpoint="stop-sms/add", count=None)
        with pytest.raises(SmsPartnerResponseError, match="stop-sms/add") as excinfo:
            hook.add_stop("+33611223344")
        assert names in str(excinfo.value)
        assert sandbox.stats.count("stop-sms/add") == ATTEMPTS

    def test_code_3_in_the_4xx_style_still_needs_success_false(self, hook, sandbox):
        sandbox.respond(b'{"code": 3, "message": "already"}', 400, endpoint="stop-sms/add", count=None)
        with pytest.raises(
            SmsPartnerResponseError, match="code 3 must be a JSON integer and come with 'success' false"
        ):
            hook.add_stop("+33611223344")

    @pytest.mark.parametrize("body", [b"{}", b'{"success": "true", "code": 200}', b'{"code": 200}', b"[]"])
    @pytest.mark.parametrize("call", ["remove_stop", "get_account"])
    def test_odd_delete_and_account_answers(self, hook, sandbox, body, call):
        sandbox.respond(body, count=None)
        with pytest.raises(SmsPartnerResponseError):
            hook.remove_stop(1) if call == "remove_stop" else hook.get_account()
        assert len(sandbox.state) == 5

    @pytest.mark.parametrize("error_style", ["http_4xx", "http_200"])
    def test_good_answers_are_read_as_before(self, hook, sandbox, error_style):
        sandbox.error_style = error_style
        added = hook.add_stop("+33611223344")
        assert added.status == "added" and isinstance(added.stop_id, int)
        assert hook.add_stop("+33611223344").status == "already_present"
        with pytest.raises(InvalidPhoneNumberError):
            hook.add_stop("nope")
        hook.remove_stop(added.stop_id)
        assert len(hook.get_stop_list()) == 5


class TestAuthWithoutCode:
    @pytest.mark.parametrize("status", [401, 403])
    @pytest.mark.parametrize(
        "body",
        [b"", b"Unauthorized", b"<html>Forbidden</html>", b'{"message": "denied"}', b'{"success": false}'],
        ids=["empty", "text", "html", "json-no-code", "success-false-no-code"],
    )
    def test_is_auth_error_and_never_retried(self, hook, sandbox, status, body):
        sandbox.respond(body, status, count=None)
        with pytest.raises(SmsPartnerAuthError) as excinfo:
            hook.add_stop("+33611223344")
        assert excinfo.value.http_status == status
        assert excinfo.value.code is None
        assert sandbox.stats.total == 1

    def test_bulk_run_stops_at_once(self, hook, sandbox):
        sandbox.respond(b"Unauthorized", 401, endpoint="stop-sms/add", count=None)
        numbers = [f"+336400{i:05d}" for i in range(200)]

        def add(number: str) -> CallOutcome:
            return CallOutcome(hook.add_stop(number).status)

        report = run_calls(
            numbers, add, max_workers=4, progress=ProgressReporter(200, "x", RecordingLogger())
        )
        assert isinstance(report.fatal, SmsPartnerAuthError)
        # Only the calls already in flight when the first 401 came back were made.
        assert sandbox.stats.count("stop-sms/add") <= 8
        assert sum(outcome is None for outcome in report.outcomes) >= 190


class TestRedirects:
    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    @pytest.mark.parametrize(
        ("endpoint", "call"),
        [
            ("stop-sms/list", lambda h: h.get_stop_list()),
            ("stop-sms/add", lambda h: h.add_stop("+33611223344")),
            ("stop-sms/delete", lambda h: h.remove_stop(1)),
            ("me", lambda h: h.get_account()),
        ],
        ids=["list-GET", "add-POST", "delete-GET", "me-GET"],
    )
    def test_never_followed_and_no_byte_reaches_the_other_host(self, hook, sandbox, status, endpoint, call):
        with LoopbackServer() as other_host:
            target = f"{other_host.url}/v1/{endpoint}?from=sandbox"
            sandbox.redirect(target, status, endpoint=endpoint, count=None)
            with pytest.raises(SmsPartnerConfigError) as excinfo:
                call(hook)
            time.sleep(0.2)  # anything sent to the other host has arrived by now
            assert other_host.connections == 0
            assert other_host.received == b""
        message = str(excinfo.value)
        assert f"HTTP {status}" in message and f"127.0.0.1:{other_host.port}" in message
        assert "from=sandbox" not in message and TEST_API_KEY not in message
        assert excinfo.value.http_status == status
        assert sandbox.stats.total == 1  # not retried
        assert "+33611223344" not in sandbox.state  # a 301/302 on add did not become a GET "added"

    def test_the_other_host_would_have_received_the_key(self, sandbox):
        """The test above is meaningful: a client that follows redirects hands the key over."""
        with LoopbackServer() as other_host:
            sandbox.redirect(f"{other_host.url}/v1/stop-sms/add", 307, endpoint="stop-sms/add")
            requests.post(
                f"{sandbox.base_url}/stop-sms/add",
                json={"apiKey": TEST_API_KEY, "phoneNumber": "+33611223344"},
                timeout=5,
            )
            assert TEST_API_KEY.encode() in other_host.received

    @pytest.mark.parametrize(
        ("location", "named"),
        [("/v1/elsewhere", "same host"), (None, "no Location"), ("http://[x", "unparsable")],
    )
    def test_relative_missing_or_odd_location(self, hook, sandbox, location, named):
        headers = {"Location": location} if location is not None else {}
        sandbox.respond(b"", 302, headers=headers, count=None)
        with pytest.raises(SmsPartnerConfigError, match=named):
            hook.get_account()


class TestBaseUrlIsParsedLikeRequests:
    def test_backslash_userinfo_trick_is_refused_before_any_byte_is_sent(self, monkeypatch, sandbox):
        with LoopbackServer() as other_host:
            # Python's urlsplit reads the host after "@" (the sandbox, loopback: allowed); requests
            # reads the host before the backslash: the other host.
            url = f"http://127.0.0.1:{other_host.port}\\@127.0.0.1:{sandbox.port}/v1"
            requests.get(f"{url}/me", params={"apiKey": TEST_API_KEY}, timeout=5)
            assert TEST_API_KEY.encode() in other_host.received, "requests no longer reads it that way"
            before = len(other_host.received)

            use_connection(monkeypatch, smspartner_connection_json(url))
            hook = SmsPartnerHook()
            with pytest.raises(SmsPartnerConfigError, match="backslash"):
                hook.get_account()
            ok, message = hook.test_connection()
            time.sleep(0.2)
            assert len(other_host.received) == before
        assert not ok and "backslash" in message
        assert sandbox.stats.total == 0


class TestDeadline:
    def test_trickled_body_gives_up_at_the_total_deadline(self, monkeypatch, sandbox):
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url, timeout=2, max_retries=0))
        sandbox.trickle_seconds = 0.5
        sandbox.inject("trickle", endpoint="stop-sms/list")
        assert len(sandbox.state.list_body()) * 0.5 > 30  # the trickle alone would take minutes
        started = time.monotonic()
        with pytest.raises(SmsPartnerConnectionError, match=r"timed out: no complete answer within 2 s"):
            SmsPartnerHook().get_stop_list()
        assert time.monotonic() - started < 10

    def test_trickled_headers_give_up_at_the_total_deadline(self, monkeypatch):
        body = b'{"success": true, "code": 200}'
        reply = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: "
            + b"x" * 60
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        with LoopbackServer(reply=reply, trickle_seconds=0.5) as server:
            assert len(reply) * 0.5 > 30
            use_connection(
                monkeypatch, smspartner_connection_json(f"{server.url}/v1", timeout=2, max_retries=0)
            )
            started = time.monotonic()
            with pytest.raises(SmsPartnerConnectionError, match="timed out"):
                SmsPartnerHook().get_account()
            assert time.monotonic() - started < 10

    def test_a_trickle_once_is_retried(self, monkeypatch, sandbox):
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url, timeout=1, max_retries=1))
        sandbox.inject("trickle", endpoint="me")
        assert "credits" in SmsPartnerHook().get_account()
        assert sandbox.stats.count("me") == 2


class TestRetryAfterHoldsEveryone:
    def test_no_request_leaves_during_the_pause(self, monkeypatch, sandbox):
        # 5/s: each thread below has reserved its next slot (0.2 s apart) before the 429 comes back.
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url, requests_per_second=5))
        sandbox.retry_after = "1"
        hook = SmsPartnerHook()
        hook.get_conn()
        sandbox.reset_stats()
        sandbox.inject("rate_limit", endpoint="me")
        threads = [threading.Thread(target=lambda: [hook.get_account() for _ in range(3)]) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        times = [t for t, _ in sandbox.stats.timestamps]
        assert len(times) == 10 and sandbox.stats.rate_limited == 1
        limited_at = times[0]  # the first request took the queued 429
        during_pause = [t - limited_at for t in times if limited_at + 0.1 < t < limited_at + 0.95]
        assert during_pause == []


SPECIAL_KEYS = [
    "plus+slash/eq=amp&pct%hash#q?-0123456789",
    "space in key with é and ü-0123456789",
    "quote\"back\\slash'tab-0123456789",
    "%41%42%2B-looks-encoded-already-0123",
    "日本語のキー-0123456789abcdef",
]


def _forms(key: str) -> dict[str, str]:
    return {
        "raw": key,
        "quote": quote(key, safe=""),
        "quote(safe='/')": quote(key),
        "quote_plus": quote_plus(key),
        "json": json.dumps(key)[1:-1],
        "json(utf-8)": json.dumps(key, ensure_ascii=False)[1:-1],
    }


class TestKeyNeverLeaks:
    @pytest.mark.parametrize(
        "key", SPECIAL_KEYS, ids=["url-special", "space-non-ascii", "quotes", "encoded", "cjk"]
    )
    def test_in_no_form_anywhere(self, monkeypatch, capfd, caplog, key):
        caplog.set_level(logging.DEBUG)
        for name in ("urllib3", "urllib3.connectionpool", "airflow"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        texts: list[str] = []

        def catch(error: type[BaseException], call) -> None:
            with pytest.raises(error) as excinfo:
                call()
            texts.extend([str(excinfo.value), repr(excinfo.value), excinfo.value.message])

        with SandboxServer(api_key=key, seed_stops=3, retry_after="0") as sandbox:
            use_connection(
                monkeypatch, smspartner_connection_json(sandbox.base_url, api_key=key, max_retries=2)
            )
            hook = SmsPartnerHook()
            texts += [repr(hook), repr(hook.settings), str(hook.settings)]
            hook.get_stop_list()
            stop_id = hook.add_stop("+33655443322").stop_id
            assert stop_id is not None
            hook.remove_stop(stop_id)
            for fault in ("server_error", "drop", "rate_limit", "malformed", "bad_gateway"):
                sandbox.inject(fault, endpoint="me")
                hook.get_account()  # retried: each retry logs a warning
            # The server echoes the key back, raw in JSON, percent-encoded in HTML.
            sandbox.respond(json.dumps({"success": False, "code": 10, "message": f"bad key {key}"}), 401)
            catch(SmsPartnerAuthError, hook.get_account)
            sandbox.respond(f"<html>{quote_plus(key)} {quote(key)} {json.dumps(key)}</html>", 500, count=3)
            catch(SmsPartnerServerError, hook.get_account)
            sandbox.respond(json.dumps({"stopId": key}), endpoint="stop-sms/add", count=3)
            catch(SmsPartnerResponseError, lambda: hook.add_stop("+33655443323"))
            sandbox.redirect(f"{sandbox.url}/v1/me?apiKey={quote_plus(key)}", 302)
            catch(SmsPartnerConfigError, hook.get_account)
            catch(InvalidPhoneNumberError, lambda: hook.add_stop("abc"))
            texts.append(hook.test_connection()[1])
            sandbox.api_key = "another-key-entirely"
            catch(SmsPartnerAuthError, hook.get_account)
            texts.append(hook.test_connection()[1])
            port = sandbox.port
        # The sandbox is gone: connection refused, an error path whose text formats the URL.
        down = SmsPartnerHook()
        catch(SmsPartnerConnectionError, down.get_account)
        texts.append(down.test_connection()[1])
        assert str(port) in texts[-1]

        captured = capfd.readouterr()
        texts += [captured.out, captured.err, caplog.text]
        texts += [record.getMessage() for record in caplog.records]
        assert any("/v1/stop-sms/list?apiKey=" in record.getMessage() for record in caplog.records), (
            "urllib3 DEBUG lines were not captured"
        )
        assert any("retry 1 of 2" in text for text in texts), texts[-3:]
        leaks = [(name, text) for text in texts for name, form in _forms(key).items() if form in text]
        assert leaks == []

    def test_every_form_is_registered_with_airflows_masker(self, monkeypatch, sandbox):
        key = SPECIAL_KEYS[0]
        masked: list[str] = []
        monkeypatch.setattr("airflow_provider_smspartner.hooks.smspartner.mask_secret", masked.append)
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url, api_key=key))
        SmsPartnerHook().settings  # noqa: B018
        assert set(_forms(key).values()) <= set(masked)
