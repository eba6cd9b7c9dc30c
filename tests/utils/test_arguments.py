"""Tests of utils.arguments: checks that run when a DAG is parsed."""

from __future__ import annotations

import pytest

from airflow_provider_smspartner.utils.arguments import (
    check_choice,
    check_count,
    check_flag,
    check_fraction,
    check_one_source,
)


class TestCheckCount:
    @pytest.mark.parametrize("value", [0, -1, 1.5, True, "3", None], ids=repr)
    def test_refuses_what_is_not_a_whole_number_of_at_least_one(self, value):
        with pytest.raises(ValueError, match=r"^max_workers must be an integer >= 1"):
            check_count("max_workers", value, minimum=1)

    def test_accepts_the_minimum(self):
        check_count("max_failed", 0, minimum=0)


class TestCheckOneSource:
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({}, "got none"),
            (
                {"phone_numbers": ["+33612345678"], "source_path": "a.csv"},
                "got phone_numbers and source_path",
            ),
            ({"sql": "SELECT 1"}, "sql needs sql_conn_id"),
        ],
        ids=["none", "two", "sql-without-connection"],
    )
    def test_refused(self, kwargs, match):
        arguments = {"phone_numbers": None, "sql": None, "sql_conn_id": None, "source_path": None, **kwargs}
        with pytest.raises(ValueError, match=match):
            check_one_source(**arguments)

    def test_an_empty_list_is_a_source(self):
        check_one_source([], None, None, None)


def test_check_choice_names_the_choices():
    with pytest.raises(ValueError, match=r"^mode must be one of replace, upsert; got 'merge'\.$"):
        check_choice("mode", "merge", ("replace", "upsert"))


class TestCheckFraction:
    @pytest.mark.parametrize("value", [-0.01, 1.01, float("nan"), True, "0.2", None], ids=repr)
    def test_refuses_what_is_not_a_share(self, value):
        with pytest.raises(ValueError, match=r"^max_removed_fraction must be a number from 0 to 1; got "):
            check_fraction("max_removed_fraction", value)

    @pytest.mark.parametrize("value", [0, 0.2, 1, 1.0], ids=repr)
    def test_accepts_shares(self, value):
        check_fraction("max_removed_fraction", value)

    def test_none_when_allowed(self):
        check_fraction("max_removed_fraction", None, allow_none=True)
        with pytest.raises(ValueError, match=r"from 0 to 1 or None; got 2"):
            check_fraction("max_removed_fraction", 2, allow_none=True)


@pytest.mark.parametrize("value", [1, 0, "True", None], ids=repr)
def test_check_flag_takes_only_bools(value):
    with pytest.raises(ValueError, match=r"^allow_empty_list must be True or False; got "):
        check_flag("allow_empty_list", value)
    check_flag("allow_empty_list", True)
