"""Tests of api.list_body: the list body decoded by Arrow, completeness, and local times to UTC."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pytest

from airflow_provider_smspartner.api.contract import LIST_ENDPOINT, parse_response
from airflow_provider_smspartner.api.list_body import (
    check_complete_list,
    local_times_to_utc,
    parse_stop_list_body,
    records_to_frame,
    stop_list_array,
)
from airflow_provider_smspartner.exceptions import SmsPartnerResponseError

ODD = [
    b"{}",
    b'{"nbData": null, "data": null}',
    b'{"success": true, "code": 200, "nbData": null, "data": null}',
    b'{"success": true, "code": 200, "nbData": 0, "data": null}',
    b'{"success": true, "code": 200, "nbData": 1, "data": [null]}',
    b'{"success": true, "code": 200, "nbData": 1, "data": [{"id": 0, "phoneNumber": "+336", "createdAt": "2015-07-20 10:19:45"}]}',
    b'{"success": true, "code": 200, "nbData": 1, "data": [{"id": 1, "phoneNumber": "+336", "createdAt": "20/07/2015"}]}',
    b'{"success": true, "code": 200, "nbData": 1, "data": [{"id": 1, "phoneNumber": "+33\xff", "createdAt": "2015-07-20 10:19:45"}]}',
    b'{"success": true, "code": 200, "nbData": 1, "data": [{"id": 1, "createdAt": "2015-07-20 10:19:45"}]}',
    b'{"success": true, "code": 200, "nbData": 0, "data": []} {"success": true}',
    b'{"success": true, "code": 200, "nbData": 0, "data": [], "success": true}',
    b'\xef\xbb\xbf{"success": true, "code": 200, "nbData": 0, "data": []}',
]

ROWS = [
    {"id": 19, "phoneNumber": "+33612345678", "createdAt": "2015-07-20 10:19:45"},
    {"id": 20, "phoneNumber": "+33612345679", "createdAt": "2015-07-21 08:00:00"},
]


def _body(**fields) -> bytes:
    return json.dumps({"success": True, "code": 200, "nbData": len(ROWS), "data": ROWS, **fields}).encode()


class TestParseStopListBody:
    def test_documented_body(self):
        body = parse_stop_list_body(_body())
        assert body["nbData"] == 2
        assert isinstance(body["data"], pa.StructArray)
        assert body["data"].to_pylist() == ROWS

    @pytest.mark.parametrize(
        "content",
        [b"", b"not json", _body(success=False), _body(code=10), json.dumps({"data": [1]}).encode()],
        ids=["empty", "not-json", "success-false", "error-code", "odd-rows"],
    )
    def test_anything_else_defers_to_the_generic_parser(self, content):
        assert parse_stop_list_body(content) is None

    @pytest.mark.parametrize("content", ODD, ids=range(len(ODD)))
    def test_never_accepts_what_the_contract_refuses(self, content):
        assert parse_stop_list_body(content) is None
        with pytest.raises(SmsPartnerResponseError):
            parse_response(LIST_ENDPOINT, 200, {}, content)

    @pytest.mark.slow  # a child interpreter
    @pytest.mark.parametrize(
        "content", [b"null", b"  null", b"null {}"], ids=["null", "spaced", "then-object"]
    )
    def test_bodies_that_crash_pyarrow_never_reach_it(self, content):
        # In a child process: pyarrow's JSON reader segfaults on a first document that is null.
        script = (
            "from airflow_provider_smspartner.api.list_body import parse_stop_list_body\n"
            f"print(parse_stop_list_body({content!r}))\n"
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout.strip().splitlines()[-1:]) == (0, ["None"]), result.stderr[
            -2000:
        ]

    def test_same_answer_as_the_generic_parser_on_good_bodies(self):
        body = _body(extra={"nested": [1, {"x": None}]})
        fast = parse_stop_list_body(body)
        assert fast is not None
        assert fast["data"].to_pylist() == parse_response(LIST_ENDPOINT, 200, {}, body)["data"]


class TestCompleteness:
    def test_count_mismatch_is_refused(self):
        with pytest.raises(SmsPartnerResponseError, match=r"nbData=3 but 2 rows"):
            check_complete_list({"nbData": 3, "data": ROWS})

    def test_count_mismatch_is_refused_by_the_arrow_path_too(self):
        with pytest.raises(SmsPartnerResponseError, match=r"nbData=3 but 2 rows"):
            parse_stop_list_body(_body(nbData=3))

    @pytest.mark.parametrize(
        "body",
        [
            {"nbData": None, "data": None},
            {"data": ROWS},
            {"nbData": "2", "data": ROWS},
            {"nbData": 2, "data": None},
        ],
        ids=["nulls", "no-count", "count-text", "no-data"],
    )
    def test_missing_or_odd_count_or_rows_are_refused(self, body):
        with pytest.raises(SmsPartnerResponseError):
            check_complete_list(body)

    def test_arrow_rows_are_checked_too(self):
        rows = stop_list_array([{**ROWS[0], "id": 0}])
        with pytest.raises(SmsPartnerResponseError):
            check_complete_list({"nbData": 1, "data": rows})

    def test_row_without_id_is_refused(self):
        with pytest.raises(SmsPartnerResponseError, match="no 'id'"):
            stop_list_array([{"phoneNumber": "+33612345678", "createdAt": "2015-07-20 10:19:45"}])


class TestFrame:
    def test_columns_and_types(self):
        frame = records_to_frame(stop_list_array(ROWS), "Europe/Paris")
        assert list(frame.columns) == ["stop_id", "phone_number", "created_at"]
        assert str(frame["created_at"].dtype) == "datetime64[us, UTC]"
        # 10:19:45 in Paris in July (UTC+2) is 08:19:45 UTC.
        assert frame["created_at"].iloc[0] == pd.Timestamp("2015-07-20 08:19:45", tz="UTC")

    def test_empty_list_keeps_the_types(self):
        frame = records_to_frame(stop_list_array([]), "Europe/Paris")
        assert frame.empty
        assert str(frame["stop_id"].dtype) == "int64"

    def test_repeated_autumn_hour_is_read_as_summer_time(self):
        # 2026-10-25 02:30 happens twice in Paris; the first (UTC+2) is taken.
        assert local_times_to_utc(["2026-10-25 02:30:00"], "Europe/Paris").iloc[0] == pd.Timestamp(
            "2026-10-25 00:30:00", tz="UTC"
        )

    def test_unparsable_time_raises(self):
        with pytest.raises(ValueError):
            local_times_to_utc(["20/07/2015"], "Europe/Paris")
