"""Tests of the SMS Partner sandbox, over real loopback HTTP with plain ``requests``."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from airflow_provider_smspartner.sandbox import (
    ENDPOINTS,
    FAULT_KINDS,
    FaultKind,
    SandboxServer,
    StopListState,
    normalize_documented,
)

API_KEY = "sandbox-test-key"
REPO_ROOT = Path(__file__).resolve().parents[2]
E164_FR_MOBILE = re.compile(r"\+33[67][0-9]{8}")
CREATED_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
LISTED = "+33699999999"
PARIS = ZoneInfo("Europe/Paris")
CLI = (sys.executable, "-m", "airflow_provider_smspartner.sandbox")


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(api_key=API_KEY, seed_stops=3, stops=[LISTED], seed=7) as server:
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def get(
    http: requests.Session, sandbox: SandboxServer, endpoint: str, timeout: float = 5, **params: Any
) -> requests.Response:
    return http.get(f"{sandbox.base_url}/{endpoint}", params=params, timeout=timeout)


def add(
    http: requests.Session, sandbox: SandboxServer, phone: object = None, key: object = API_KEY, **extra: Any
) -> requests.Response:
    body: dict[str, Any] = {"apiKey": key, **extra}
    if phone is not None:
        body["phoneNumber"] = phone
    return http.post(f"{sandbox.base_url}/stop-sms/add", json=body, timeout=5)


def list_stops(http: requests.Session, sandbox: SandboxServer) -> dict[str, Any]:
    response = get(http, sandbox, "stop-sms/list", apiKey=API_KEY)
    assert response.status_code == 200
    return response.json()


class TestList:
    def test_shape_and_count(self, sandbox, http):
        response = get(http, sandbox, "stop-sms/list", apiKey=API_KEY)

        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/json")
        body = response.json()
        assert body["success"] is True
        assert body["code"] == 200
        assert body["nbData"] == len(body["data"]) == 4
        assert [row["id"] for row in body["data"]] == [1, 2, 3, 4]
        for row in body["data"]:
            assert set(row) == {"id", "phoneNumber", "createdAt"}
            assert E164_FR_MOBILE.fullmatch(row["phoneNumber"])
            assert CREATED_AT.fullmatch(row["createdAt"])
        assert body["data"][-1]["phoneNumber"] == LISTED

    def test_empty_list(self, http):
        with SandboxServer(api_key=API_KEY) as empty:
            assert list_stops(http, empty) == {"success": True, "code": 200, "nbData": 0, "data": []}

    @pytest.mark.parametrize(
        ("created_utc", "expected"),
        [
            pytest.param(datetime(2024, 1, 15, 12, 0, 0), "2024-01-15 13:00:00", id="winter-utc+1"),
            pytest.param(datetime(2024, 7, 15, 12, 0, 0), "2024-07-15 14:00:00", id="summer-utc+2"),
            pytest.param(datetime(2024, 3, 31, 0, 59, 59), "2024-03-31 01:59:59", id="before-spring-forward"),
            pytest.param(datetime(2024, 3, 31, 1, 0, 0), "2024-03-31 03:00:00", id="after-spring-forward"),
            pytest.param(datetime(2024, 10, 27, 0, 30, 0), "2024-10-27 02:30:00", id="before-fall-back"),
            pytest.param(datetime(2024, 10, 27, 1, 30, 0), "2024-10-27 02:30:00", id="after-fall-back"),
            pytest.param(datetime(2023, 12, 31, 23, 30, 0), "2024-01-01 00:30:00", id="new-year-day-change"),
            pytest.param(
                datetime(2024, 6, 1, 8, 0, tzinfo=timezone(timedelta(hours=5))),
                "2024-06-01 05:00:00",
                id="aware-input",
            ),
        ],
    )
    def test_created_at_is_paris_local_time(self, http, created_utc, expected):
        with SandboxServer(api_key=API_KEY, stops=[("+33612345678", created_utc)]) as server:
            assert list_stops(http, server)["data"][0]["createdAt"] == expected

    def test_manual_add_is_dated_now(self, sandbox, http):
        before = datetime.now(timezone.utc).replace(microsecond=0)
        add(http, sandbox, "0611111111")
        row = list_stops(http, sandbox)["data"][-1]
        created = datetime.strptime(row["createdAt"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=PARIS)
        assert before <= created <= datetime.now(timezone.utc) + timedelta(seconds=1)

    def test_xml_format_is_ignored(self, sandbox, http):
        response = get(http, sandbox, "stop-sms/list", apiKey=API_KEY, _format="xml")
        assert response.json()["nbData"] == 4

    def test_body_is_cached_until_the_list_changes(self, sandbox, http):
        first = sandbox.state.list_body()
        assert sandbox.state.list_body() is first
        add(http, sandbox, "0611111111")
        changed = sandbox.state.list_body()
        assert changed is not first
        assert list_stops(http, sandbox)["nbData"] == 5


class TestAdd:
    def test_success_returns_next_id(self, sandbox, http):
        response = add(http, sandbox, "0611111111")

        assert response.status_code == 200
        assert response.json() == {"success": True, "code": 200, "stopId": 5}
        assert sandbox.state.get_id("+33611111111") == 5
        assert list_stops(http, sandbox)["data"][-1] == {
            "id": 5,
            "phoneNumber": "+33611111111",
            "createdAt": list_stops(http, sandbox)["data"][-1]["createdAt"],
        }
        assert sandbox.stats.adds_applied == 1

    def test_new_id_is_max_plus_one_after_delete(self, sandbox, http):
        assert get(http, sandbox, "stop-sms/delete", apiKey=API_KEY, id=2).status_code == 200
        assert add(http, sandbox, "0611111111").json()["stopId"] == 5
        assert get(http, sandbox, "stop-sms/delete", apiKey=API_KEY, id=5).status_code == 200
        assert add(http, sandbox, "0622222222").json()["stopId"] == 5

    @pytest.mark.parametrize(
        ("raw", "stored"),
        [
            pytest.param("0612345678", "+33612345678", id="fr-national-mobile"),
            pytest.param("0712345678", "+33712345678", id="fr-national-07"),
            pytest.param("0112345678", "+33112345678", id="fr-national-landline"),
            pytest.param("+33612345678", "+33612345678", id="fr-international"),
            pytest.param("  +33612345678\t", "+33612345678", id="surrounding-whitespace"),
            pytest.param("+4915112345678", "+4915112345678", id="de-international"),
            pytest.param("+447911123456", "+447911123456", id="uk-international"),
            pytest.param("+12025550123", "+12025550123", id="us-international"),
            pytest.param("+21262012345", "+21262012345", id="8-to-15-digits-short"),
            pytest.param("+123456789012345", "+123456789012345", id="15-digits"),
            pytest.param("+12345678", "+12345678", id="8-digits"),
        ],
    )
    def test_documented_formats_are_accepted(self, sandbox, http, raw, stored):
        response = add(http, sandbox, raw)

        assert response.status_code == 200, response.text
        assert sandbox.state.get_id(stored) == response.json()["stopId"]
        assert normalize_documented(raw) == stored

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param("0033612345678", id="00-prefix"),
            pytest.param("33612345678", id="bare-country-code"),
            pytest.param("612345678", id="fr-without-0"),
            pytest.param("06 12 34 56 78", id="inner-spaces"),
            pytest.param("+33 6 12 34 56 78", id="international-with-spaces"),
            pytest.param("06.12.34.56.78", id="dots"),
            pytest.param("+33-612345678", id="dash"),
            pytest.param("061234567", id="fr-national-too-short"),
            pytest.param("06123456789", id="fr-national-too-long"),
            pytest.param("0012345678", id="fr-national-0-after-0"),
            pytest.param("+33012345678", id="fr-international-0-after-33"),
            pytest.param("+3361234567", id="fr-international-too-short"),
            pytest.param("+336123456789", id="fr-international-too-long"),
            pytest.param("+0123456789", id="country-code-starting-0"),
            pytest.param("+1234567", id="7-digits"),
            pytest.param("+1234567890123456", id="16-digits"),
            pytest.param("+33\uff1612345678", id="non-ascii-digit"),
            pytest.param("tel:+33612345678", id="tel-uri"),
            pytest.param("abcdefghij", id="letters"),
            pytest.param("+", id="plus-only"),
            pytest.param(612345678, id="json-number"),
            pytest.param(["+33612345678"], id="json-list"),
        ],
    )
    def test_undocumented_formats_are_rejected_with_code_9(self, sandbox, http, raw):
        before = sandbox.state.snapshot()

        response = add(http, sandbox, raw)

        assert response.status_code == 400
        assert response.json() == {"success": False, "code": 9, "message": "Invalid phone number"}
        assert sandbox.state.snapshot() == before
        assert normalize_documented(raw) is None

    @pytest.mark.parametrize(
        "again",
        [
            pytest.param("+33699999999", id="same-form"),
            pytest.param("0699999999", id="national-form"),
            pytest.param(" 0699999999 ", id="padded"),
        ],
    )
    def test_duplicates_are_detected_on_e164(self, sandbox, http, again):
        response = add(http, sandbox, again)

        assert response.status_code == 400
        assert response.json() == {"success": False, "code": 3, "message": "Number is already in stop list"}
        assert len(sandbox.state) == 4
        assert sandbox.stats.adds_applied == 0

    def test_content_type_is_not_required(self, sandbox, http):
        body = f'{{"apiKey":"{API_KEY}","phoneNumber":"0611111111"}}'
        response = http.post(f"{sandbox.base_url}/stop-sms/add", data=body, timeout=5)
        assert response.json()["code"] == 200


def _error_cases() -> list[Any]:
    key, wrong = API_KEY, "not-the-key"
    return [
        pytest.param("add", {"phoneNumber": "0611111111"}, 1, 401, id="add-missing-key"),
        pytest.param("add", {"apiKey": "", "phoneNumber": "0611111111"}, 1, 401, id="add-empty-key"),
        pytest.param("add", {"apiKey": wrong, "phoneNumber": "0611111111"}, 10, 401, id="add-wrong-key"),
        pytest.param("add", {"apiKey": 12345, "phoneNumber": "0611111111"}, 10, 401, id="add-non-string-key"),
        pytest.param("add", {"apiKey": key}, 2, 400, id="add-missing-phone"),
        pytest.param("add", {"apiKey": key, "phoneNumber": ""}, 2, 400, id="add-empty-phone"),
        pytest.param("add", {"apiKey": key, "phoneNumber": "   "}, 2, 400, id="add-blank-phone"),
        pytest.param("add", {"apiKey": key, "phoneNumber": None}, 2, 400, id="add-null-phone"),
        pytest.param("add", {"apiKey": key, "phoneNumbers": "0611111111"}, 2, 400, id="add-plural-key"),
        pytest.param("add", {"apiKey": key, "phoneNumber": LISTED}, 3, 400, id="add-already-listed"),
        pytest.param("add", {"apiKey": key, "phoneNumber": "0033611111111"}, 9, 400, id="add-invalid"),
        pytest.param("add-raw", b'{"apiKey": "x", "phoneNumber": ', 90, 400, id="add-broken-json"),
        pytest.param("add-raw", b"", 90, 400, id="add-empty-body"),
        pytest.param("add-raw", b'["+33611111111"]', 90, 400, id="add-json-array"),
        pytest.param("add-raw", b"\xff\xfe{}", 90, 400, id="add-not-utf8"),
        pytest.param("stop-sms/delete", {"apiKey": key}, 3, 400, id="delete-missing-id"),
        pytest.param("stop-sms/delete", {"apiKey": key, "id": ""}, 3, 400, id="delete-empty-id"),
        pytest.param("stop-sms/delete", {"apiKey": key, "id": "abc"}, 3, 400, id="delete-non-integer-id"),
        pytest.param("stop-sms/delete", {"apiKey": key, "id": "1.5"}, 3, 400, id="delete-decimal-id"),
        pytest.param("stop-sms/delete", {"apiKey": key, "id": "999"}, 4, 404, id="delete-unknown-id"),
        pytest.param("stop-sms/delete", {"id": "1"}, 1, 401, id="delete-missing-key"),
        pytest.param("stop-sms/delete", {"apiKey": wrong, "id": "1"}, 10, 401, id="delete-wrong-key"),
        pytest.param("stop-sms/list", {}, 1, 401, id="list-missing-key"),
        pytest.param("stop-sms/list", {"apiKey": ""}, 1, 401, id="list-empty-key"),
        pytest.param("stop-sms/list", {"apiKey": wrong}, 10, 401, id="list-wrong-key"),
        pytest.param("me", {}, 1, 401, id="me-missing-key"),
        pytest.param("me", {"apiKey": wrong}, 10, 401, id="me-wrong-key"),
    ]


_MESSAGES = {
    ("add", 1): "API key is required",
    ("add", 10): "Invalid API key",
    ("add", 3): "Number is already in stop list",
    ("stop-sms/delete", 3): "Number ID is required",
    ("stop-sms/delete", 4): "Number ID cannot be found",
}


class TestErrorCodes:
    @pytest.mark.parametrize("style", ["http_4xx", "http_200"])
    @pytest.mark.parametrize(("target", "payload", "code", "status_4xx"), _error_cases())
    def test_error(self, sandbox, http, style, target, payload, code, status_4xx):
        sandbox.error_style = style
        before = sandbox.state.snapshot()
        if target == "add":
            response = http.post(f"{sandbox.base_url}/stop-sms/add", json=payload, timeout=5)
        elif target == "add-raw":
            response = http.post(f"{sandbox.base_url}/stop-sms/add", data=payload, timeout=5)
        else:
            response = get(http, sandbox, target, **payload)

        expected_status = status_4xx if style == "http_4xx" or code == 90 else 200
        assert response.status_code == expected_status
        body = response.json()
        assert body["success"] is False
        assert body["code"] == code
        assert isinstance(body["message"], str) and body["message"]
        expected_message = _MESSAGES.get((target.removesuffix("-raw"), code))
        if expected_message:
            assert body["message"] == expected_message
        assert sandbox.state.snapshot() == before

    def test_key_is_never_echoed(self, sandbox, http):
        response = get(http, sandbox, "me", apiKey="a-wrong-secret-key")
        assert "a-wrong-secret-key" not in response.text


class TestDeleteAndMe:
    def test_delete_removes_the_entry(self, sandbox, http):
        response = get(http, sandbox, "stop-sms/delete", apiKey=API_KEY, id=4)

        assert response.status_code == 200
        assert response.json() == {"success": True, "code": 200}
        assert LISTED not in sandbox.state.phone_numbers()
        assert [row["id"] for row in list_stops(http, sandbox)["data"]] == [1, 2, 3]
        assert get(http, sandbox, "stop-sms/delete", apiKey=API_KEY, id=4).json()["code"] == 4

    def test_me(self, sandbox, http):
        body = get(http, sandbox, "me", apiKey=API_KEY).json()

        assert body["success"] is True
        assert body["code"] == 200
        assert body["user"] == {"username": "sandbox@example.com"}
        assert body["credits"] == {
            "creditSms": 1000,
            "creditSmsECO": 0,
            "creditHlr": 0,
            "toSend": 0,
            "balance": "10.000",
            "currency": "EUR",
        }


class TestRouting:
    @pytest.mark.parametrize("path", ["/v1/unknown", "/v2/stop-sms/list", "/", "/v1/stop-sms"], ids=str)
    def test_unknown_path_is_404_json(self, sandbox, http, path):
        response = http.get(f"{sandbox.url}{path}", params={"apiKey": API_KEY}, timeout=5)

        assert response.status_code == 404
        assert response.json() == {"success": False, "code": 404, "message": "Not found"}

    @pytest.mark.parametrize(
        ("method", "endpoint"),
        [("POST", "stop-sms/list"), ("GET", "stop-sms/add"), ("DELETE", "stop-sms/delete"), ("PUT", "me")],
        ids=lambda value: str(value),
    )
    def test_wrong_method_is_405(self, sandbox, http, method, endpoint):
        response = http.request(method, f"{sandbox.base_url}/{endpoint}", timeout=5)

        assert response.status_code == 405
        assert response.json()["code"] == 405

    def test_trailing_slash_is_tolerated(self, sandbox, http):
        response = http.get(f"{sandbox.base_url}/me/", params={"apiKey": API_KEY}, timeout=5)
        assert response.status_code == 200

    def test_keep_alive_connection_is_reused(self, sandbox, http):
        for _ in range(20):
            assert get(http, sandbox, "me", apiKey=API_KEY).status_code == 200
        assert len(sandbox._httpd._connections) == 1  # type: ignore[union-attr]


class TestFaults:
    @pytest.mark.parametrize(
        ("kind", "status", "marker"),
        [
            pytest.param("server_error", 500, "500 Internal Server Error", id="server_error"),
            pytest.param("bad_gateway", 502, "502 Bad Gateway", id="bad_gateway"),
        ],
    )
    def test_html_error_pages(self, sandbox, http, kind, status, marker):
        sandbox.inject(kind, endpoint="stop-sms/add")

        response = add(http, sandbox, "0611111111")

        assert response.status_code == status
        assert response.headers["Content-Type"].startswith("text/html")
        assert marker in response.text
        assert sandbox.state.get_id("0611111111") is None
        assert add(http, sandbox, "0611111111").status_code == 200

    def test_drop_closes_without_applying(self, sandbox, http):
        sandbox.inject("drop", endpoint="stop-sms/add")

        with pytest.raises(requests.ConnectionError):
            add(http, sandbox, "0611111111")

        assert sandbox.state.get_id("0611111111") is None
        assert sandbox.stats.adds_applied == 0
        assert add(http, sandbox, "0611111111").status_code == 200

    def test_lost_response_applies_the_add(self, sandbox, http):
        sandbox.inject(FaultKind.LOST_RESPONSE, endpoint="stop-sms/add")

        with pytest.raises(requests.ConnectionError):
            add(http, sandbox, "0611111111")

        assert sandbox.state.get_id("+33611111111") == 5
        assert sandbox.stats.adds_applied == 1
        retry = add(http, sandbox, "0611111111")
        assert retry.json()["code"] == 3

    def test_lost_response_applies_a_delete(self, sandbox, http):
        sandbox.inject("lost_response", endpoint="stop-sms/delete")

        with pytest.raises(requests.ConnectionError):
            get(http, sandbox, "stop-sms/delete", apiKey=API_KEY, id=1)

        assert len(sandbox.state) == 3

    def test_slow_makes_the_client_time_out(self, sandbox, http):
        sandbox.slow_seconds = 0.6
        sandbox.inject("slow", count=2, endpoint="me")

        with pytest.raises(requests.Timeout):
            get(http, sandbox, "me", timeout=0.15, apiKey=API_KEY)
        started = time.monotonic()
        response = get(http, sandbox, "me", apiKey=API_KEY)

        assert response.status_code == 200
        assert time.monotonic() - started >= 0.55

    def test_malformed_body(self, sandbox, http):
        sandbox.inject("malformed")

        response = get(http, sandbox, "me", apiKey=API_KEY)

        assert response.status_code == 200
        with pytest.raises(ValueError):
            response.json()

    @pytest.mark.parametrize("retry_after", ["1", "7"])
    def test_rate_limit_fault(self, sandbox, http, retry_after):
        sandbox.retry_after = retry_after
        sandbox.inject("rate_limit", endpoint="stop-sms/add")

        response = add(http, sandbox, "0611111111")

        assert response.status_code == 429
        assert response.headers["Retry-After"] == retry_after
        assert response.json() == {"success": False, "code": 429, "message": "Too many requests"}
        assert sandbox.stats.rate_limited == 1
        assert sandbox.state.get_id("0611111111") is None

    def test_truncated_list(self, sandbox, http):
        sandbox.inject("truncated_list")

        # An endpoint-less truncated_list waits for a list request.
        assert get(http, sandbox, "me", apiKey=API_KEY).status_code == 200
        body = list_stops(http, sandbox)

        assert body["nbData"] == 4
        assert [row["id"] for row in body["data"]] == [1, 2, 3]
        assert list_stops(http, sandbox)["nbData"] == len(list_stops(http, sandbox)["data"]) == 4

    def test_truncated_single_row_list(self, http):
        with SandboxServer(api_key=API_KEY, stops=[LISTED]) as server:
            server.inject("truncated_list")
            assert list_stops(http, server) == {"success": True, "code": 200, "nbData": 1, "data": []}

    def test_queued_faults_are_fifo_and_match_endpoints(self, sandbox, http):
        sandbox.inject("server_error", endpoint="stop-sms/add")
        sandbox.inject("bad_gateway")

        assert get(http, sandbox, "me", apiKey=API_KEY).status_code == 502
        assert get(http, sandbox, "me", apiKey=API_KEY).status_code == 200
        assert add(http, sandbox, "0611111111").status_code == 500
        assert add(http, sandbox, "0611111111").status_code == 200
        assert sandbox.pending_faults() == []
        assert sandbox.stats.by_fault == {"server_error": 1, "bad_gateway": 1}

    def test_a_fault_after_n_requests_lands_mid_run(self, sandbox, http):
        sandbox.retry_after = "7200"
        sandbox.inject("rate_limit", count=2, endpoint="stop-sms/add", after=3)
        sandbox.inject("server_error", endpoint="stop-sms/add")

        statuses = [add(http, sandbox, f"+3361{i:07d}").status_code for i in range(7)]
        # The 429s skip 3 adds (the 500 hit one of them), then take the 4th and the 5th.
        assert statuses == [500, 200, 200, 429, 429, 200, 200]
        assert get(http, sandbox, "me", apiKey=API_KEY).status_code == 200  # other endpoints do not count
        assert sandbox.pending_faults() == []

    @pytest.mark.parametrize("after", [-1, 1.5, True], ids=["negative", "fraction", "bool"])
    def test_after_must_be_a_whole_number(self, sandbox, after):
        with pytest.raises(ValueError, match="after must be a whole number"):
            sandbox.inject("drop", after=after)

    def test_faults_come_before_authentication(self, sandbox, http):
        sandbox.inject("server_error", count=2)

        assert get(http, sandbox, "me", apiKey="wrong").status_code == 500
        assert get(http, sandbox, "me").status_code == 500
        assert get(http, sandbox, "me").status_code == 401

    def test_random_faults_are_deterministic_for_a_seed(self, http):
        def statuses(seed: int) -> list[int]:
            with SandboxServer(api_key=API_KEY, fault_rates={"server_error": 0.5}, seed=seed) as server:
                return [get(http, server, "me", apiKey=API_KEY).status_code for _ in range(30)]

        first = statuses(3)
        assert first == statuses(3)
        assert {200, 500} == set(first)
        assert first != statuses(4)

    def test_random_faults_respect_fault_endpoints(self, http):
        with SandboxServer(
            api_key=API_KEY, fault_rates={"bad_gateway": 1.0}, fault_endpoints={"stop-sms/add"}
        ) as server:
            assert get(http, server, "me", apiKey=API_KEY).status_code == 200
            assert add(http, server, "0611111111").status_code == 502
            server.fault_rates = None
            assert add(http, server, "0611111111").status_code == 200

    def test_random_fault_mix_hits_every_kind(self, http):
        rates = {"server_error": 0.2, "drop": 0.2, "lost_response": 0.2, "rate_limit": 0.2}
        with SandboxServer(api_key=API_KEY, fault_rates=rates, seed=1) as server:
            for index in range(60):
                with contextlib.suppress(requests.ConnectionError):
                    add(http, server, f"+3361{index:07d}")
            faults = server.stats.by_fault
            assert set(faults) == set(rates)
            assert server.stats.adds_applied == len(server.state)
            assert server.stats.rate_limited == faults["rate_limit"]

    @pytest.mark.parametrize(
        ("kind", "endpoint", "message"),
        [
            pytest.param("explode", None, "Unknown fault kind", id="unknown-kind"),
            pytest.param("drop", "stop-sms/nope", "Unknown sandbox endpoint", id="unknown-endpoint"),
            pytest.param("truncated_list", "me", "cannot apply", id="list-only-fault"),
        ],
    )
    def test_invalid_injection(self, sandbox, kind, endpoint, message):
        with pytest.raises(ValueError, match=message):
            sandbox.inject(kind, endpoint=endpoint)

    def test_invalid_rates(self):
        with pytest.raises(ValueError, match="more than 1"):
            SandboxServer(fault_rates={"drop": 0.6, "slow": 0.6})
        with pytest.raises(ValueError, match="between 0 and 1"):
            SandboxServer(fault_rates={"drop": 1.5})

    def test_endpoint_names_accept_a_path(self, sandbox, http):
        sandbox.inject("server_error", endpoint="/v1/stop-sms/list")
        assert get(http, sandbox, "stop-sms/list", apiKey=API_KEY).status_code == 500

    def test_fault_kinds_are_exported(self):
        assert {kind.value for kind in FaultKind} == FAULT_KINDS
        assert len(FAULT_KINDS) == 9

    def test_trickle_sends_the_body_a_byte_at_a_time(self, sandbox, http):
        sandbox.trickle_seconds = 0.05
        sandbox.inject("trickle", endpoint="stop-sms/add")
        started = time.monotonic()
        # Each read waits at most 0.05 s, so a per-read timeout of 1 s never fires.
        response = http.post(
            f"{sandbox.base_url}/stop-sms/add",
            json={"apiKey": API_KEY, "phoneNumber": "0611111111"},
            timeout=(5, 1),
        )
        assert response.json() == {"success": True, "code": 200, "stopId": 5}
        assert time.monotonic() - started >= (len(response.content) - 1) * 0.05
        assert sandbox.stats.adds_applied == 1  # processed before the first byte went out
        assert sandbox.stats.by_fault == {"trickle": 1}

    def test_stop_ends_a_trickle(self, http):
        server = SandboxServer(api_key=API_KEY, trickle_seconds=30).start()
        server.inject("trickle")
        thread = threading.Thread(target=lambda: _swallow(lambda: get(http, server, "me", apiKey=API_KEY)))
        thread.start()
        time.sleep(0.2)
        started = time.monotonic()
        server.stop()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert time.monotonic() - started < 5


class TestScriptedAnswers:
    def test_raw_body_and_status_before_any_check(self, sandbox, http):
        sandbox.respond(b'{"nbData": null, "data": null}', endpoint="stop-sms/list")

        response = get(http, sandbox, "stop-sms/list")  # no key: the scripted answer comes first

        assert response.status_code == 200
        assert response.content == b'{"nbData": null, "data": null}'
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert list_stops(http, sandbox)["nbData"] == 4  # used up: the real list again
        assert sandbox.stats.scripted == 1

    def test_any_bytes_status_headers_and_content_type(self, sandbox, http):
        sandbox.respond(b"\xff\xfe not UTF-8", 403, headers={"X-Why": "rehearsal"}, content_type="text/plain")

        response = get(http, sandbox, "me", apiKey=API_KEY)

        assert (response.status_code, response.content) == (403, b"\xff\xfe not UTF-8")
        assert response.headers["X-Why"] == "rehearsal"
        assert response.headers["Content-Type"].startswith("text/plain")

    def test_text_body_is_utf8(self, sandbox, http):
        sandbox.respond('{"message": "clé"}', 401)
        assert get(http, sandbox, "me").content == '{"message": "clé"}'.encode()

    def test_add_is_not_applied(self, sandbox, http):
        sandbox.respond("{}", endpoint="stop-sms/add")
        assert add(http, sandbox, "0611111111").content == b"{}"
        assert sandbox.state.get_id("0611111111") is None

    def test_count_endpoint_and_order(self, sandbox, http):
        sandbox.respond("first", 500, endpoint="me", count=2)
        sandbox.respond("any", 502)
        assert sandbox.pending_responses() == [(500, "me", 2), (502, None, 1)]

        assert add(http, sandbox, "0611111111").status_code == 502  # the endpoint-less one
        assert [get(http, sandbox, "me", apiKey=API_KEY).status_code for _ in range(3)] == [500, 500, 200]
        assert sandbox.pending_responses() == []

    def test_every_request_until_cleared(self, sandbox, http):
        sandbox.respond("{}", endpoint="me", count=None)
        assert all(get(http, sandbox, "me", apiKey=API_KEY).content == b"{}" for _ in range(5))
        assert sandbox.pending_responses() == [(200, "me", None)]
        sandbox.clear_responses()
        assert get(http, sandbox, "me", apiKey=API_KEY).json()["code"] == 200

    def test_scripted_answers_come_before_faults(self, sandbox, http):
        sandbox.inject("server_error", endpoint="me")
        sandbox.respond("{}", endpoint="me")
        assert get(http, sandbox, "me", apiKey=API_KEY).content == b"{}"
        assert get(http, sandbox, "me", apiKey=API_KEY).status_code == 500

    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    def test_redirect(self, sandbox, http, status):
        sandbox.redirect("http://127.0.0.1:9/elsewhere", status, endpoint="stop-sms/add")

        response = http.post(
            f"{sandbox.base_url}/stop-sms/add", json={"apiKey": API_KEY}, timeout=5, allow_redirects=False
        )

        assert response.status_code == status
        assert response.headers["Location"] == "http://127.0.0.1:9/elsewhere"

    def test_a_client_that_follows_a_redirect_goes_there(self, sandbox, http):
        sandbox.redirect(f"{sandbox.base_url}/me?apiKey={API_KEY}", 302, endpoint="stop-sms/list")
        response = get(http, sandbox, "stop-sms/list", apiKey=API_KEY)
        assert response.history[0].status_code == 302
        assert "credits" in response.json()

    @pytest.mark.parametrize(
        ("call", "message"),
        [
            pytest.param(lambda s: s.respond("{}", 199), "status", id="status-too-low"),
            pytest.param(lambda s: s.respond("{}", 600), "status", id="status-too-high"),
            pytest.param(
                lambda s: s.respond("{}", headers={"Content-Length": "9"}), "written by the sandbox", id="cl"
            ),
            pytest.param(lambda s: s.respond("{}", headers={"X": "a\r\nB: c"}), "invalid header", id="crlf"),
            pytest.param(lambda s: s.respond("{}", count=0), "count", id="count-zero"),
            pytest.param(
                lambda s: s.respond("{}", endpoint="nope"), "Unknown sandbox endpoint", id="endpoint"
            ),
            pytest.param(lambda s: s.redirect("http://x", 200), "300-399", id="redirect-status"),
            pytest.param(
                lambda s: s.redirect("http://x\r\nSet-Cookie: a"), "invalid header", id="redirect-crlf"
            ),
        ],
    )
    def test_invalid_scripts(self, sandbox, call, message):
        with pytest.raises(ValueError, match=message):
            call(sandbox)


class TestRateLimitAndLatency:
    def test_limiter_answers_429_with_retry_after(self, sandbox, http):
        sandbox.rate_limit = 5

        statuses = [get(http, sandbox, "me", apiKey=API_KEY) for _ in range(8)]

        assert [r.status_code for r in statuses] == [200] * 5 + [429] * 3
        assert statuses[-1].headers["Retry-After"] == "1"
        assert statuses[-1].json()["code"] == 429
        assert sandbox.stats.rate_limited == 3
        sandbox.rate_limit = None
        assert get(http, sandbox, "me", apiKey=API_KEY).status_code == 200

    def test_limiter_window_slides(self, sandbox, http):
        sandbox.rate_limit = 2
        assert [get(http, sandbox, "me", apiKey=API_KEY).status_code for _ in range(3)] == [200, 200, 429]
        time.sleep(1.05)
        assert get(http, sandbox, "me", apiKey=API_KEY).status_code == 200

    def test_latency_is_added(self, sandbox, http):
        sandbox.latency = 0.2
        started = time.monotonic()
        assert get(http, sandbox, "me", apiKey=API_KEY).status_code == 200
        assert time.monotonic() - started >= 0.19


class TestStats:
    def test_counters(self, sandbox, http):
        started = time.monotonic()
        add(http, sandbox, "0611111111")
        add(http, sandbox, "0611111111")
        get(http, sandbox, "stop-sms/list", apiKey=API_KEY)
        get(http, sandbox, "me", apiKey="wrong")
        http.get(f"{sandbox.url}/nope", timeout=5)

        stats = sandbox.stats
        assert stats.total == 5
        assert stats.by_endpoint == {"stop-sms/add": 2, "stop-sms/list": 1, "me": 1, "other": 1}
        assert stats.by_status == {200: 2, 400: 1, 401: 1, 404: 1}
        assert stats.adds_applied == 1
        assert stats.rate_limited == 0
        assert stats.count() == 5
        assert stats.count("stop-sms/add") == 2
        assert stats.count("stop-sms/add", since=started) == 2
        assert stats.count(since=time.monotonic()) == 0
        times = [t for t, _ in stats.timestamps]
        assert times == sorted(times) and times[0] >= started
        assert [e for _, e in stats.timestamps][:2] == ["stop-sms/add", "stop-sms/add"]

        sandbox.reset_stats()
        assert stats.total == 0 and stats.by_endpoint == {} and stats.timestamps == []
        assert stats.as_dict()["adds_applied"] == 0

    def test_counters_are_thread_safe(self, sandbox):
        def worker(offset: int) -> None:
            with requests.Session() as session:
                for index in range(25):
                    add(session, sandbox, f"+3361{offset:02d}{index:05d}")

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert sandbox.stats.count("stop-sms/add") == 150
        assert sandbox.stats.adds_applied == 150
        assert len(sandbox.state) == 154
        assert sorted(sandbox.state.snapshot().values()) == list(range(1, 155))


class TestStatsEndpoint:
    """``GET /_sandbox/stats``: what a fleet rehearsal reads (the CI deployment test among them)."""

    KEYS = {
        "requests_total",
        "requests_by_endpoint",
        "status_counts",
        "rate_limited",
        "busiest_second",
        "busiest_second_by_endpoint",
        "active_seconds_by_endpoint",
        "faults",
        "scripted",
        "adds_applied",
    }

    def test_reports_what_the_sandbox_saw(self, http):
        with SandboxServer(api_key=API_KEY, rate_limit=3, retry_after="0") as sandbox:
            sandbox.inject("server_error", endpoint="me")
            for index in range(4):
                add(http, sandbox, f"+3361200000{index}")
            get(http, sandbox, "me", apiKey=API_KEY)
            response = http.get(sandbox.stats_url, timeout=5)
            assert response.status_code == 200
            assert response.headers["Content-Type"].startswith("application/json")
            stats = response.json()
            assert stats == sandbox.stats.as_dict()
        assert set(stats) == self.KEYS
        assert stats["requests_total"] == 5
        assert stats["requests_by_endpoint"] == {"stop-sms/add": 4, "me": 1}
        # 3 per sliding second: the 4th add and the `me` are refused before any fault is drawn.
        assert stats["status_counts"] == {"200": 3, "429": 2}
        assert stats["rate_limited"] == 2
        assert stats["busiest_second"] == 5
        assert stats["busiest_second_by_endpoint"] == {"stop-sms/add": 4, "me": 1}
        assert stats["faults"] == {}
        assert stats["adds_applied"] == 3
        assert 0 <= stats["active_seconds_by_endpoint"]["stop-sms/add"] < 1

    def test_is_outside_the_api_and_outside_its_own_counts(self, sandbox, http):
        sandbox.latency = 0.5  # not applied to the stats endpoint
        started = time.monotonic()
        for _ in range(3):
            assert http.get(sandbox.stats_url, timeout=5).json()["requests_total"] == 0
        assert time.monotonic() - started < 0.5
        assert sandbox.stats_url == f"{sandbox.url}/_sandbox/stats"
        assert http.get(f"{sandbox.url}/_sandbox/nope", timeout=5).status_code == 404
        assert http.post(sandbox.stats_url, timeout=5).status_code == 404

    def test_faults_and_reset(self, sandbox, http):
        sandbox.latency = 0
        sandbox.inject("server_error", endpoint="me")
        sandbox.inject("drop", endpoint="me")
        get(http, sandbox, "me", apiKey=API_KEY)
        with contextlib.suppress(requests.ConnectionError):
            get(http, sandbox, "me", apiKey=API_KEY)
        stats = http.get(sandbox.stats_url, timeout=5).json()
        assert stats["faults"] == {"server_error": 1, "drop": 1}
        assert stats["status_counts"] == {"500": 1}  # a dropped connection gets no status
        assert http.post(f"{sandbox.stats_url}/reset", timeout=5).json() == {"reset": True}
        assert http.get(sandbox.stats_url, timeout=5).json()["requests_total"] == 0

    def test_busiest_second_is_the_most_requests_in_any_sliding_second(self):
        from airflow_provider_smspartner.sandbox.stats import _BusiestSecond

        rng = random.Random(5)
        times = [*sorted(rng.uniform(0, 10) for _ in range(400)), 10.5, 10.5, 11.4999]
        window = _BusiestSecond()
        for stamp in times:
            window.add(stamp)
        brute = max(sum(1 for t in times if end - 1.0 < t <= end) for end in times)
        assert window.busiest == brute


class TestSettingsAndLifecycle:
    def test_settings_change_while_running(self, sandbox, http):
        sandbox.error_style = "http_200"
        assert get(http, sandbox, "me", apiKey="x").status_code == 200
        sandbox.api_key = "rotated"
        assert get(http, sandbox, "me", apiKey=API_KEY).json()["code"] == 10
        assert get(http, sandbox, "me", apiKey="rotated").json()["code"] == 200

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            pytest.param({"host": "0.0.0.0"}, "non-loopback", id="wildcard-host"),
            pytest.param({"host": "example.com"}, "non-loopback", id="remote-name"),
            pytest.param({"error_style": "http_500"}, "error_style", id="bad-error-style"),
            pytest.param({"latency": -1}, "latency", id="negative-latency"),
            pytest.param({"api_key": ""}, "api_key", id="empty-key"),
        ],
    )
    def test_invalid_settings(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            SandboxServer(**kwargs)

    def test_stop_is_idempotent_and_closes_everything(self, http):
        server = SandboxServer(api_key=API_KEY).start()
        assert server.start() is server
        assert get(http, server, "me", apiKey=API_KEY).status_code == 200
        server.stop()
        server.stop()

        assert not server.running
        with pytest.raises(requests.ConnectionError):
            get(http, server, "me", apiKey=API_KEY)

    def test_restart_keeps_port_and_state(self, http):
        with SandboxServer(api_key=API_KEY, stops=[LISTED]) as server:
            port = server.port
            server.stop()
            server.start()
            assert server.port == port
            assert list_stops(http, server)["nbData"] == 1

    def test_stop_wakes_a_slow_handler(self, http):
        server = SandboxServer(api_key=API_KEY, slow_seconds=30).start()
        server.inject("slow")
        thread = threading.Thread(target=lambda: _swallow(lambda: get(http, server, "me", apiKey=API_KEY)))
        thread.start()
        time.sleep(0.2)
        started = time.monotonic()
        server.stop()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert time.monotonic() - started < 5

    def test_urls(self, sandbox):
        assert sandbox.url == f"http://127.0.0.1:{sandbox.port}"
        assert sandbox.base_url == f"{sandbox.url}/v1"
        assert API_KEY not in repr(sandbox)


def _swallow(call: Any) -> None:
    with contextlib.suppress(requests.RequestException):
        call()


class TestState:
    def test_seeding_is_deterministic(self):
        now = datetime(2025, 1, 1, tzinfo=timezone.utc)
        first, second, other = StopListState(), StopListState(), StopListState()
        first.seed_random(500, random.Random(42), now=now)
        second.seed_random(500, random.Random(42), now=now)
        other.seed_random(500, random.Random(43), now=now)

        entries = first.list_entries()
        assert entries == second.list_entries()
        assert entries != other.list_entries()
        assert [entry.stop_id for entry in entries] == list(range(1, 501))
        assert len({entry.phone_number for entry in entries}) == 500
        assert all(E164_FR_MOBILE.fullmatch(entry.phone_number) for entry in entries)
        dates = [entry.created_at for entry in entries]
        assert dates == sorted(dates)
        assert now - timedelta(days=3 * 365 + 1) <= dates[0] and dates[-1] <= now

    def test_server_seeding_is_deterministic(self):
        with SandboxServer(seed_stops=50, seed=5) as one, SandboxServer(seed_stops=50, seed=5) as two:
            assert one.state.phone_numbers() == two.state.phone_numbers()
            assert len(one.state) == 50

    def test_seed_random_skips_listed_numbers(self):
        state = StopListState()
        state.seed_random(100, random.Random(1))
        state.seed_random(100, random.Random(1))
        assert len(state) == 200
        assert len(state.phone_numbers()) == 200

    def test_fast_list_body_matches_a_json_dumps_reference(self):
        state = StopListState()
        state.seed_random(2000, random.Random(9))
        edges = [datetime(2024, 3, 31, 1, 0) + timedelta(seconds=delta) for delta in (-1, 0, 1)]
        edges += [datetime(2024, 10, 27, 1, 0) + timedelta(seconds=delta) for delta in (-1, 0, 1)]
        state.seed_numbers((f"+4915112345{index:03d}", when) for index, when in enumerate(edges))
        rows = [
            {
                "id": entry.stop_id,
                "phoneNumber": entry.phone_number,
                "createdAt": entry.created_at.astimezone(PARIS).strftime("%Y-%m-%d %H:%M:%S"),
            }
            for entry in state.list_entries()
        ]
        reference = {"success": True, "code": 200, "nbData": len(rows), "data": rows}

        assert state.list_body() == json.dumps(reference, separators=(",", ":")).encode()

    def test_seed_numbers(self):
        state = StopListState()
        added = state.seed_numbers(
            ["+33611111111", ("0622222222", datetime(2024, 5, 1, 10, 0)), "+33611111111"]
        )

        assert added == 2
        assert state.list_entries()[1] == (
            2,
            "+33622222222",
            datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc),
        )
        with pytest.raises(ValueError, match="invalid number"):
            state.seed_numbers(["06 11"])

    def test_add_remove_clear(self):
        state = StopListState()
        assert state.add("0611111111") == (200, 1)
        assert state.add("+33611111111") == (3, None)
        assert state.add("") == (2, None)
        assert state.add("nope") == (9, None)
        assert "0611111111" in state
        assert state.remove(1) is True
        assert state.remove(1) is False
        assert len(state) == 0
        state.add("0611111111")
        state.clear()
        assert len(state) == 0 and state.add("0611111111") == (200, 1)

    def test_concurrent_adds_get_distinct_ids(self):
        state = StopListState()

        def worker(offset: int) -> None:
            for index in range(500):
                state.add(f"+3361{offset}{index:06d}")

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(state.snapshot().values()) == list(range(1, 4001))


def _read_line(stream: Any, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout} s")
        return stream.readline()
    finally:
        selector.close()


@pytest.fixture
def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.slow  # a child interpreter
class TestCli:
    def test_serves_and_exits_on_sigterm_without_leaking_the_key(self, cli_env, http):
        secret = "cli-secret-key-4f9a"
        process = subprocess.Popen(
            [*CLI, "--port", "0", "--api-key", secret, "--seed-stops", "5", "--seed", "42"],
            cwd=REPO_ROOT,
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = _read_line(process.stdout, timeout=15)
            match = re.fullmatch(
                r"SMS Partner sandbox listening on (http://127\.0\.0\.1:\d+/v1) \(5 stops\)\n", line
            )
            assert match, line
            base_url = match.group(1)

            listed = http.get(f"{base_url}/stop-sms/list", params={"apiKey": secret}, timeout=5).json()
            assert listed["nbData"] == 5
            added = http.post(
                f"{base_url}/stop-sms/add", json={"apiKey": secret, "phoneNumber": "0611111111"}, timeout=5
            )
            assert added.json()["stopId"] == 6
            assert http.get(f"{base_url}/nope", params={"apiKey": secret}, timeout=5).status_code == 404
            http.post(f"{base_url}/stop-sms/add", data=b"{" + secret.encode(), timeout=5)
            http.close()

            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()

        assert process.returncode == 0
        assert secret not in line + stdout + stderr
        assert stderr == ""

    def test_stats_file_is_written_on_exit(self, cli_env, http, tmp_path):
        stats_file = tmp_path / "stats.json"
        process = subprocess.Popen(
            [*CLI, "--port", "0", "--api-key", API_KEY, "--rate-limit", "2", "--stats-file", str(stats_file)],
            cwd=REPO_ROOT,
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            base_url = re.search(r"(http://\S+)/v1", _read_line(process.stdout, timeout=15)).group(1)  # type: ignore[union-attr]
            for _ in range(3):
                http.get(f"{base_url}/v1/me", params={"apiKey": API_KEY}, timeout=5)
            served = http.get(f"{base_url}/_sandbox/stats", timeout=5).json()
            assert not stats_file.exists()
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0
        written = json.loads(stats_file.read_text())
        assert written == served
        assert written["requests_by_endpoint"] == {"me": 3}
        assert written["status_counts"] == {"200": 2, "429": 1}
        assert written["busiest_second"] == 3

    def test_sigint_also_stops(self, cli_env):
        process = subprocess.Popen(
            [*CLI, "--port", "0"],
            cwd=REPO_ROOT,
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert _read_line(process.stdout, timeout=15).startswith("SMS Partner sandbox listening on")
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0

    def test_scripted_answers_from_the_command_line(self, cli_env, http):
        process = subprocess.Popen(
            [
                *CLI,
                "--port",
                "0",
                "--respond",
                "stop-sms/list",
                "200",
                '{"nbData": null, "data": null}',
                "--redirect",
                "stop-sms/add",
                "307",
                "http://127.0.0.1:9/elsewhere",
            ],
            cwd=REPO_ROOT,
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = _read_line(process.stdout, timeout=15)
            base_url = re.search(r"(http://\S+/v1)", line).group(1)  # type: ignore[union-attr]
            for _ in range(2):  # every request, not only the first
                listed = http.get(f"{base_url}/stop-sms/list", timeout=5)
                assert listed.content == b'{"nbData": null, "data": null}'
            added = http.post(f"{base_url}/stop-sms/add", json={}, timeout=5, allow_redirects=False)
            assert (added.status_code, added.headers["Location"]) == (307, "http://127.0.0.1:9/elsewhere")
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            pytest.param(
                ["--respond", "nope", "200", "{}"], "Unknown sandbox endpoint", id="respond-endpoint"
            ),
            pytest.param(["--respond", "me", "99", "{}"], "HTTP status from 200 to 599", id="respond-status"),
            pytest.param(["--redirect", "me", "200", "http://x"], "from 300 to 399", id="redirect-status"),
            pytest.param(["--trickle-seconds", "0"], "--trickle-seconds", id="trickle-zero"),
            pytest.param(["--host", "0.0.0.0"], "--allow-remote", id="non-loopback-host"),
            pytest.param(["--fault-rate", "explode=0.1"], "KIND=RATE", id="unknown-fault"),
            pytest.param(["--error-style", "http_500"], "invalid choice", id="bad-error-style"),
        ],
    )
    def test_refuses_bad_arguments(self, cli_env, args, message):
        result = subprocess.run(
            [*CLI, "--port", "0", *args],
            cwd=REPO_ROOT,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert message in result.stderr


class TestEndpoints:
    def test_every_endpoint_requires_a_key(self, sandbox, http):
        for endpoint in ENDPOINTS:
            method = "POST" if endpoint == "stop-sms/add" else "GET"
            body = {} if method == "POST" else None
            response = http.request(method, f"{sandbox.base_url}/{endpoint}", json=body, timeout=5)
            assert response.status_code == 401, endpoint
            assert response.json()["code"] == 1
