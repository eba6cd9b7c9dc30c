"""Pure units of the bulk pipeline: progress lines, sources, planning, merging, the thread runner."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from airflow_provider_smspartner.bulk import log_failures
from airflow_provider_smspartner.bulk_plan import (
    NOT_PROCESSED,
    count_statuses,
    listed_pairs,
    merge_call_outcomes,
    plan_inputs,
)
from airflow_provider_smspartner.bulk_progress import ProgressReporter, format_duration
from airflow_provider_smspartner.bulk_runner import CallOutcome, run_calls
from airflow_provider_smspartner.bulk_sources import PhoneSource, file_format, pick_column, values_from_object
from airflow_provider_smspartner.exceptions import SmsPartnerAuthError, SmsPartnerServerError

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingLogger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: object) -> None:
        self.lines.append(message % args)

    warning = info


class TestProgressReporter:
    def test_logs_each_tenth_and_never_more_often(self):
        clock, logger = FakeClock(), RecordingLogger()
        progress = ProgressReporter(1000, "stop-sms/add", logger, clock=clock)
        for _ in range(1000):
            clock.now += 0.001
            progress.advance()
        assert len(logger.lines) == 10
        assert logger.lines[0].startswith("stop-sms/add: 100/1000 done (10%), 1000.0 req/s, ETA 1 s")
        assert logger.lines[-1].startswith("stop-sms/add: 1000/1000 done (100%)")
        assert logger.lines[-1].endswith("done")

    def test_logs_every_interval_between_tenths(self):
        clock, logger = FakeClock(), RecordingLogger()
        progress = ProgressReporter(10_000, "stop-sms/add", logger, clock=clock, interval=10.0)
        for _ in range(50):  # 2 calls per second for 25 s: no 10 % step reached
            clock.now += 0.5
            progress.advance()
        assert len(logger.lines) == 2
        assert logger.lines[0] == "stop-sms/add: 20/10000 done (0%), 2.0 req/s, ETA 1 h 23 min"

    def test_rate_is_current_not_overall(self):
        clock, logger = FakeClock(), RecordingLogger()
        progress = ProgressReporter(100, "x", logger, clock=clock)
        clock.now += 10.0
        progress.advance(10)  # 1/s over the first 10 s
        clock.now += 1.0
        progress.advance(10)  # then 10/s
        assert "10.0 req/s" in logger.lines[-1]
        assert "ETA 8 s" in logger.lines[-1]

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(0.4, "0 s"), (59, "59 s"), (65, "1 min 05 s"), (7260, "2 h 01 min")],
        ids=["zero", "seconds", "minutes", "hours"],
    )
    def test_format_duration(self, seconds, text):
        assert format_duration(seconds) == text


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

    @pytest.mark.parametrize(
        ("path", "kind"),
        [("a.csv", "csv"), ("s3://b/a.CSV.gz", "csv"), ("a.parquet", "parquet"), ("file:///a.pq", "parquet")],
        ids=["csv", "csv-gz-uri", "parquet", "pq-uri"],
    )
    def test_file_format(self, path, kind):
        assert file_format(path) == kind

    def test_file_format_refuses_unknown_extension(self):
        with pytest.raises(ValueError, match=r"must end with \.csv"):
            file_format("numbers.xlsx")

    def test_pick_column_without_columns(self):
        with pytest.raises(ValueError, match="has no columns"):
            pick_column([], None, "the query result")


class TestPlan:
    def test_invalid_duplicate_and_undecided(self):
        values = pd.Series(["06 12 34 56 78", "+33612345678", "abc", None, "0033612345678", "0751234567"])
        plan = plan_inputs(values, "FR", NOW)
        assert plan["status"].fillna("?").tolist() == [
            "?",
            "duplicate",
            "invalid",
            "invalid",
            "duplicate",
            "?",
        ]
        assert plan["phone_e164"].tolist()[:2] == ["+33612345678", "+33612345678"]
        assert plan["error_message"].tolist()[2:4] == ["not_a_number", "empty"]
        assert (plan["processed_at"] == pd.Timestamp(NOW)).all()

    def test_listed_pairs_keep_every_stop_id_of_a_number(self):
        plan = plan_inputs(pd.Series(["0612345678", "0751234567", "0612345679", "0612345678"]), "FR", NOW)
        stop_list = pd.DataFrame(
            {
                "stop_id": [30, 10, 20, 40],
                "phone_e164": ["+33612345678", "+33612345678", "+33751234567", None],
            }
        )
        pairs = listed_pairs(plan, stop_list)
        assert pairs.to_dict("list") == {"row": [0, 0, 1], "stop_id": [10, 30, 20]}

    def test_merge_reports_the_most_alarming_outcome_of_a_row(self):
        plan = plan_inputs(pd.Series(["0612345678", "0751234567", "0612345679"]), "FR", NOW)
        results = [
            CallOutcome("removed", stop_id=1, finished_at=NOW.timestamp() + 5),
            CallOutcome("failed", error_code=500, error_message="boom", finished_at=NOW.timestamp() + 6),
            CallOutcome("not_on_list", stop_id=3),
            None,
        ]
        merge_call_outcomes(plan, [0, 0, 1, 2], results, item_stop_ids=[1, 2, 3, 4])
        assert plan["status"].tolist() == ["failed", "not_on_list", NOT_PROCESSED]
        assert plan["stop_id"].tolist() == [2, 3, 4]
        assert plan.loc[0, "error_code"] == 500
        assert plan.loc[0, "processed_at"] == pd.Timestamp(NOW) + pd.Timedelta(seconds=6)
        assert plan.loc[2, "processed_at"] == pd.Timestamp(NOW)

    def test_failure_sample_is_bounded(self):
        plan = plan_inputs(pd.Series([f"+336123456{i:02d}" for i in range(15)]), "FR", NOW)
        merge_call_outcomes(plan, range(15), [CallOutcome("failed", error_code=9, error_message="no")] * 15)
        logger = RecordingLogger()
        log_failures(plan, logger)
        assert len(logger.lines) == 11
        assert logger.lines[0] == "failed: +33612345600 (input '+33612345600'): code 9: no"
        assert logger.lines[-1] == "... and 5 more failures"

    def test_count_statuses_lists_every_status(self):
        plan = plan_inputs(pd.Series(["abc", "0612345678"]), "FR", NOW)
        plan.loc[1, "status"] = "added"
        assert count_statuses(plan, ("invalid", "added", "failed")) == {
            "total": 2,
            "invalid": 1,
            "added": 1,
            "failed": 0,
        }


class TestRunCalls:
    def test_every_item_gets_its_outcome_in_order(self):
        progress = ProgressReporter(50, "x", RecordingLogger())

        def call(item: int) -> CallOutcome:
            if item % 10 == 0:
                raise SmsPartnerServerError("server error (HTTP 500)", http_status=500)
            return CallOutcome("added", stop_id=item)

        report = run_calls(list(range(50)), call, max_workers=4, progress=progress)
        assert report.fatal is None
        assert [o.stop_id for o in report.outcomes if o and o.status == "added"] == [
            i for i in range(50) if i % 10
        ]
        failed = [o for o in report.outcomes if o and o.status == "failed"]
        assert len(failed) == 5
        assert "SmsPartnerServerError" in (failed[0].error_message or "")
        assert all(o is not None and o.finished_at > 0 for o in report.outcomes)
        assert progress.done == 50

    def test_auth_error_stops_the_run(self):
        calls: list[int] = []
        lock = threading.Lock()

        def call(item: int) -> CallOutcome:
            with lock:
                calls.append(item)
            raise SmsPartnerAuthError("Invalid API key", code=10, http_status=401)

        report = run_calls(list(range(1000)), call, max_workers=4, progress=ProgressReporter(1000, "x"))
        assert isinstance(report.fatal, SmsPartnerAuthError)
        assert len(calls) <= 4
        attempted = [o for o in report.outcomes if o is not None]
        assert len(attempted) == len(calls)
        assert all(o.status == "failed" and o.error_code == 10 for o in attempted)
        assert np.sum([o is None for o in report.outcomes]) == 1000 - len(calls)

    def test_no_items(self):
        report = run_calls(
            [], lambda item: CallOutcome("added"), max_workers=8, progress=ProgressReporter(0, "x")
        )
        assert report.outcomes == []
