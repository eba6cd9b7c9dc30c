"""Tests of bulk.sources: reading phone numbers from values, SQL and files."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from airflow_provider_smspartner.bulk.sources import PhoneSource, pick_column, values_from_object

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class TestSources:
    @pytest.mark.parametrize(
        ("value", "column", "expected"),
        [
            (["0612345678", 612345679, None], None, ["0612345678", 612345679, None]),
            (("a", "b"), None, ["a", "b"]),
            (pd.DataFrame({"id": [1, 2], "phone": ["x", "y"]}), "phone", ["x", "y"]),
            (pd.DataFrame({"tel": ["x"]}, index=[7]), None, ["x"]),
            ([{"id": 1, "phone": "x"}, {"id": 2}], "phone", ["x", None]),
            ([{"Phone": "x"}], "phone", ["x"]),
            (pd.Series(["x", "y"], index=[5, 9]), None, ["x", "y"]),
        ],
        ids=["list", "tuple", "dataframe", "one-column-frame", "dicts", "case-folded-key", "series"],
    )
    def test_values_from_object(self, value, column, expected):
        values = values_from_object(value, column)
        assert values.tolist() == expected
        assert list(values.index) == list(range(len(expected)))

    @pytest.mark.parametrize(
        ("value", "column", "match"),
        [
            ("0612345678", None, "single string"),
            ({"phone": ["x"]}, None, "is a dict"),
            ([["a"], ["b"]], None, r"phone_numbers\[0\] is a list.*expand"),
            ([{"phone": "x"}, "y"], "phone", "mixes dicts and plain values"),
            (
                pd.DataFrame({"id": [1], "phone": ["x"]}),
                None,
                r"2 columns \['id', 'phone'\].*set phone_column",
            ),
            (
                pd.DataFrame({"id": [1], "phone": ["x"]}),
                "mobile",
                r"'mobile' is not a column.*\['id', 'phone'\]",
            ),
            ([{"id": 1, "tel": "x"}], "phone", r"'phone' is not a column.*\['id', 'tel'\]"),
            (42, None, "must be a list"),
        ],
        ids=[
            "string",
            "dict",
            "nested-lists",
            "mixed",
            "ambiguous",
            "unknown-column",
            "unknown-key",
            "scalar",
        ],
    )
    def test_values_from_object_refuses(self, value, column, match):
        with pytest.raises(ValueError, match=match):
            values_from_object(value, column)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({}, "got none"),
            ({"phone_numbers": [], "sql": "SELECT 1", "sql_conn_id": "db"}, "got phone_numbers and sql"),
            ({"sql": "SELECT 1"}, "sql needs sql_conn_id"),
        ],
        ids=["none", "two", "sql-without-connection"],
    )
    def test_check_refuses(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            PhoneSource(**kwargs).check()

    def test_pick_column_without_columns(self):
        with pytest.raises(ValueError, match="has no columns"):
            pick_column([], None, "the query result")
