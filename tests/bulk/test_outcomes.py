"""Tests of bulk.outcomes: the outcome table (plan, settle, merge)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from airflow_provider_smspartner.bulk.outcomes import (
    NOT_PROCESSED,
    count_statuses,
    listed_pairs,
    merge_call_outcomes,
    plan_inputs,
)
from airflow_provider_smspartner.bulk.pipeline import log_failures
from airflow_provider_smspartner.bulk.runner import CallOutcome
from tests.helpers import RecordingLogger

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


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
        assert (plan["decided_at"] == pd.Timestamp(NOW)).all()

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
        assert plan.loc[0, "decided_at"] == pd.Timestamp(NOW) + pd.Timedelta(seconds=6)
        assert plan.loc[2, "decided_at"] == pd.Timestamp(NOW)

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
