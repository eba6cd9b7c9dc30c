"""Tests of bulk.reconcile and of the pipeline's use of it: calls whose answer was lost are
settled against the stop list, so the record says what this run did to the list."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from airflow.exceptions import AirflowException

from airflow_provider_smspartner.bulk.outcomes import NOT_PROCESSED, PENDING, CallOutcome
from airflow_provider_smspartner.bulk.reconcile import reconcile_calls, recover_earlier
from airflow_provider_smspartner.operators.smspartner import (
    SmsPartnerAddStopsOperator,
    SmsPartnerRemoveStopsOperator,
)
from tests.helpers import listed_once, new_numbers, read_results, status_counts, ti_context, use_sandbox

LIST = pd.DataFrame({"stop_id": [5, 9, 7], "phone_e164": ["+33611111111", "+33622222222", "+33611111111"]})


class TestReconcileCalls:
    def test_add(self):
        outcomes = [
            CallOutcome(PENDING, error_message="dropped", unapplied_status="failed"),
            CallOutcome(PENDING, error_message="dropped", unapplied_status="failed"),
            CallOutcome(PENDING, note="answer lost", unapplied_status="already_present"),
            CallOutcome("added", stop_id=3),
            None,
        ]
        items = ["+33611111111", "+33633333333", "+33622222222", "+33644444444", "+33655555555"]
        settled = reconcile_calls("add", outcomes, items, LIST)
        assert [o.status if o else None for o in settled] == ["added", "failed", "added", "added", None]
        assert [o.stop_id if o else None for o in settled] == [5, None, 9, 3, None]
        assert (
            settled[0] is not None
            and settled[0].note == "no answer received; on the stop list at the end of the run"
        )
        assert settled[0].error_message == "dropped"
        assert (
            settled[2] is not None
            and settled[2].note == "answer lost; on the stop list at the end of the run"
        )

    def test_add_of_a_number_listed_before_the_run_is_not_claimed(self):
        outcome = CallOutcome(PENDING, unapplied_status="already_present")
        (settled,) = reconcile_calls("add", [outcome], ["+33622222222"], LIST, listed_before={"+33622222222"})
        assert settled is not None and settled.status == "already_present"

    def test_remove(self):
        outcomes = [CallOutcome(PENDING, stop_id=4, unapplied_status="failed")] * 2
        settled = reconcile_calls("remove", outcomes, [4, 9], LIST)
        assert [o.status if o else None for o in settled] == ["removed", "failed"]


class TestRecoverEarlier:
    def test_add(self):
        earlier = pd.DataFrame(
            {
                "try_number": [1, 1, 2, 2, 1],
                "input_row": [0, 1, 1, 2, 3],
                "phone_e164": [
                    "+33611111111",
                    "+33633333333",
                    "+33633333333",
                    "+33622222222",
                    "+33644444444",
                ],
                "status": [PENDING, PENDING, PENDING, PENDING, "added"],
                "stop_id": pd.array([None, None, None, None, 8], dtype="Int64"),
            }
        )
        listed = pd.concat([LIST, pd.DataFrame({"stop_id": [10], "phone_e164": ["+33633333333"]})])
        recovery = recover_earlier("add", earlier, listed, try_number=3)
        updates = recovery.updates.sort_values(["try_number", "input_row"]).reset_index(drop=True)
        assert updates[["try_number", "input_row", "status"]].values.tolist() == [
            [1, 0, "added"],
            [1, 1, NOT_PROCESSED],  # try 2 sent it again: its call is the one that counts
            [2, 1, "added"],
            [2, 2, "added"],
        ]
        assert updates["stop_id"].astype("Int64").fillna(-1).tolist() == [5, -1, 10, 9]
        assert (
            updates.loc[0, "note"]
            == "try 1 ended before recording its outcome; on the stop list when try 3 started"
        )
        assert recovery.applied_by == {
            "+33611111111": 1,
            "+33633333333": 2,
            "+33622222222": 2,
            "+33644444444": 1,
        }

    def test_remove(self):
        earlier = pd.DataFrame(
            {
                "try_number": [1, 1],
                "input_row": [0, 1],
                "phone_e164": ["+33611111111", "+33633333333"],
                "status": [PENDING, PENDING],
                "stop_id": pd.array([5, 12], dtype="Int64"),
            }
        )
        updates = recover_earlier("remove", earlier, LIST, try_number=2).updates
        assert updates["status"].tolist() == [NOT_PROCESSED, "removed"]
        assert updates["stop_id"].tolist() == [5, 12]


def _add(**kwargs: Any) -> SmsPartnerAddStopsOperator:
    return SmsPartnerAddStopsOperator(task_id="add_stops", **kwargs)


def _remove(**kwargs: Any) -> SmsPartnerRemoveStopsOperator:
    return SmsPartnerRemoveStopsOperator(task_id="remove_stops", **kwargs)


class TestLostAnswers:
    @pytest.mark.parametrize("skip_existing", [True, False], ids=["diffed", "not-diffed"])
    def test_code_3_to_the_retry_of_a_lost_add_is_added(self, api, sqlite_conn, skip_existing):
        number = new_numbers(1, api)[0]
        api.inject("lost_response", count=1, endpoint="stop-sms/add")
        summary = _add(
            phone_numbers=[number],
            results_table="adds",
            results_conn_id=sqlite_conn,
            skip_existing=skip_existing,
        ).execute(ti_context(1))
        assert summary["added"] == 1 and summary["already_present"] == 0
        assert api.stats.count("stop-sms/add") == 2  # the lost one and its retry (code 3)
        (row,) = read_results(sqlite_conn, "adds").itertuples()
        assert (row.status, row.stop_id) == ("added", api.state.get_id(number))
        assert "answer to an earlier attempt was lost" in row.note
        assert "on the stop list at the end of the run" in row.note

    def test_code_4_to_the_retry_of_a_lost_delete_is_removed(self, api, sqlite_conn):
        number = sorted(api.state.phone_numbers())[0]
        api.inject("lost_response", count=1, endpoint="stop-sms/delete")
        summary = _remove(
            phone_numbers=[number], results_table="removals", results_conn_id=sqlite_conn
        ).execute(ti_context(1, task_id="remove_stops"))
        assert (summary["removed"], summary["not_on_list"]) == (1, 0)
        (row,) = read_results(sqlite_conn, "removals").itertuples()
        assert row.status == "removed" and "the retry found it gone" in row.note

    def test_add_under_half_faults(self, api, monkeypatch, sqlite_conn):
        """Half the adds meet a fault, one retry each: whatever fails, no listed number says failed."""
        use_sandbox(monkeypatch, api, max_retries=1)
        api.fault_rates = {"lost_response": 0.3, "drop": 0.1, "server_error": 0.1}
        api.fault_endpoints = {"stop-sms/add"}
        numbers = new_numbers(300, api)
        summary = _add(
            phone_numbers=numbers, results_table="adds", results_conn_id=sqlite_conn, max_failed=300
        ).execute(ti_context(1))
        rows = read_results(sqlite_conn, "adds")
        listed = api.state.phone_numbers()
        failed = set(rows.loc[rows["status"] == "failed", "phone_e164"])
        assert failed, "no call failed: the test proves nothing"
        assert not failed & listed
        assert set(rows.loc[rows["status"] == "added", "phone_e164"]) == set(numbers) & listed
        assert summary["added"] == (rows["status"] == "added").sum() == api.stats.adds_applied
        assert summary["failed"] + summary["added"] + summary["already_present"] == len(numbers)
        assert summary["already_present"] == 0

    def test_remove_under_lost_answers(self, api, sqlite_conn):
        """8 % lost answers on 2,000 deletes: every number this run removed says removed."""
        numbers = new_numbers(2000, api)
        api.state.seed_numbers(numbers)
        api.fault_rates = {"lost_response": 0.08}
        api.fault_endpoints = {"stop-sms/delete"}
        summary = _remove(
            phone_numbers=numbers, results_table="removals", results_conn_id=sqlite_conn, max_workers=8
        ).execute(ti_context(1, task_id="remove_stops"))
        assert api.stats.by_fault["lost_response"] > 50
        assert not set(numbers) & api.state.phone_numbers()
        assert (summary["removed"], summary["not_on_list"], summary["failed"]) == (2000, 0, 0)
        assert status_counts(read_results(sqlite_conn, "removals")) == {"removed": 2000}

    def test_unconfirmed_calls_stay_pending_for_the_next_try(self, api, monkeypatch, sqlite_conn):
        """The list cannot be fetched to confirm a lost add: the task fails, the row stays pending,
        and the retry records it added under the try that sent it."""
        use_sandbox(monkeypatch, api, max_retries=1)
        number = new_numbers(1, api)[0]
        api.inject("lost_response", count=2, endpoint="stop-sms/add")
        api.inject("server_error", count=2, endpoint="stop-sms/list")
        op = _add(
            phone_numbers=[number], results_table="adds", results_conn_id=sqlite_conn, skip_existing=False
        )
        with pytest.raises(
            AirflowException, match="1 calls got no answer and the stop list could not be fetched"
        ):
            op.execute(ti_context(1))
        assert status_counts(read_results(sqlite_conn, "adds")) == {PENDING: 1}
        summary = op.execute(ti_context(2))
        assert summary["skipped_existing"] == 1 and summary["added"] == 0
        rows = read_results(sqlite_conn, "adds").sort_values("try_number")
        assert rows[["try_number", "status"]].values.tolist() == [[1, "added"], [2, "skipped_existing"]]
        assert rows["note"].tolist()[1] == "added by try 1 of this task instance"
        assert api.stats.adds_applied == 1
        assert listed_once(api, [number])
