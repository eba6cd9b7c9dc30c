"""Tests of utils.stop_list: the list body decoded by Arrow, completeness, and local times to UTC."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from airflow_provider_smspartner.exceptions import SmsPartnerResponseError
from airflow_provider_smspartner.utils.stop_list import (
    check_complete_list,
    local_times_to_utc,
    parse_stop_list_body,
    records_to_frame,
    stop_list_array,
)

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


class TestCompleteness:
    def test_count_mismatch_is_refused(self):
        with pytest.raises(SmsPartnerResponseError, match=r"nbData=3 but 2 rows"):
            check_complete_list({"nbData": 3, "data": ROWS})

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
