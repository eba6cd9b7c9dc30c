"""SmsPartnerRemoveStopsOperator over real loopback HTTP against the sandbox, with SQLite."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from airflow.exceptions import AirflowException

from airflow_provider_smspartner.bulk import BulkOptions, remove_stops
from airflow_provider_smspartner.exceptions import SmsPartnerAuthError, StopNotFoundError
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.operators.stop_list import SmsPartnerRemoveStopsOperator
from tests.operators import (
    CONTEXT,
    inject_faults,
    national,
    new_numbers,
    nonzero,
    read_results,
    status_counts,
    use_sandbox,
)

ALL_STATUSES = ("invalid", "duplicate", "not_on_list", "removed", "failed", "would_remove")


def _remove(**kwargs: Any) -> SmsPartnerRemoveStopsOperator:
    return SmsPartnerRemoveStopsOperator(task_id="remove_stops", **kwargs)


@pytest.fixture
def api(sandbox, monkeypatch) -> Any:
    """The sandbox (5 seeded stops), with the default connection pointing at it."""
    use_sandbox(monkeypatch, sandbox)
    return sandbox


def _mixed(sandbox: Any) -> tuple[list[Any], list[str]]:
    """Three listed numbers in several formats (one twice), one unlisted number and junk."""
    listed = sorted(sandbox.state.phone_numbers())[:3]
    unlisted = new_numbers(1, sandbox)[0]
    values = [
        listed[0],
        national(listed[1]),
        "00" + listed[2][1:],
        national(listed[0]),
        unlisted,
        "junk",
        None,
    ]
    return values, listed


class TestRemove:
    def test_outcomes(self, api):
        values, listed = _mixed(api)
        summary = _remove(phone_numbers=values).execute(context=CONTEXT)
        assert set(summary) == {"total", *ALL_STATUSES}
        assert summary["total"] == len(values) == sum(summary[s] for s in ALL_STATUSES)
        assert nonzero(summary) == {"removed": 3, "duplicate": 1, "not_on_list": 1, "invalid": 2}
        assert not set(listed) & api.state.phone_numbers()
        assert len(api.state) == 2

    def test_with_faults_every_number_leaves_the_list(self, api):
        inject_faults(api, "stop-sms/delete")
        numbers = new_numbers(150, api)
        api.state.seed_numbers(numbers)
        summary = _remove(phone_numbers=numbers, max_workers=8).execute(context=CONTEXT)
        assert not set(numbers) & api.state.phone_numbers()
        # A delete applied but whose answer was lost is retried and then finds nothing (code 4).
        assert summary["removed"] + summary["not_on_list"] == len(numbers)
        assert summary["failed"] == 0
        assert sum(api.stats.by_fault.values()) > 0

    def test_rerun_deletes_nothing(self, api):
        values, _ = _mixed(api)
        _remove(phone_numbers=values).execute(context=CONTEXT)
        api.reset_stats()
        summary = _remove(phone_numbers=values).execute(context=CONTEXT)
        assert api.stats.count("stop-sms/delete") == 0
        assert nonzero(summary) == {"duplicate": 1, "not_on_list": 4, "invalid": 2}

    def test_dry_run_deletes_nothing(self, api):
        before = api.state.snapshot()
        values, _ = _mixed(api)
        summary = _remove(phone_numbers=values, dry_run=True).execute(context=CONTEXT)
        assert api.stats.count("stop-sms/delete") == 0
        assert api.state.snapshot() == before
        assert nonzero(summary) == {"would_remove": 3, "duplicate": 1, "not_on_list": 1, "invalid": 2}

    def test_removed_meanwhile_counts_as_not_on_list(self, api, monkeypatch):
        listed = sorted(api.state.phone_numbers())[:2]
        fetch = SmsPartnerHook.get_stop_list_df

        def fetch_then_lose_one(hook: SmsPartnerHook) -> pd.DataFrame:
            frame = fetch(hook)
            api.state.remove(api.state.get_id(listed[0]))  # someone else deletes it after our list call
            return frame

        monkeypatch.setattr(SmsPartnerHook, "get_stop_list_df", fetch_then_lose_one)
        summary = _remove(phone_numbers=listed).execute(context=CONTEXT)
        assert nonzero(summary) == {"removed": 1, "not_on_list": 1}

    def test_results_table(self, api, sqlite_conn):
        values, _ = _mixed(api)
        summary = _remove(
            phone_numbers=values, results_table="removals", results_conn_id=sqlite_conn
        ).execute(context=CONTEXT)
        rows = read_results(sqlite_conn, "removals")
        assert len(rows) == len(values)
        assert status_counts(rows) == nonzero(summary)
        assert rows.loc[rows["status"] == "removed", "stop_id"].notna().all()

    def test_same_sources_as_add(self, api, sqlite_conn):
        from airflow_provider_smspartner.sql import resolve_dbapi_hook

        listed = sorted(api.state.phone_numbers())[:2]
        hook = resolve_dbapi_hook(sqlite_conn)
        hook.run("CREATE TABLE optouts_revoked (id INTEGER, phone TEXT)")
        hook.insert_rows("optouts_revoked", [(1, national(listed[0])), (2, listed[1])])
        summary = _remove(
            sql="SELECT id, phone FROM optouts_revoked", sql_conn_id=sqlite_conn, phone_column="PHONE"
        ).execute(context=CONTEXT)
        assert nonzero(summary) == {"removed": 2}


class TestFailures:
    def test_max_failed(self, api, monkeypatch, sqlite_conn):
        use_sandbox(monkeypatch, api, max_retries=1)
        api.inject("server_error", count=2, endpoint="stop-sms/delete")
        values, _ = _mixed(api)
        op = _remove(
            phone_numbers=values, max_workers=1, results_table="removals", results_conn_id=sqlite_conn
        )
        with pytest.raises(AirflowException, match=r"1 of 7 numbers failed \(max_failed=0\)"):
            op.execute(context=CONTEXT)
        rows = read_results(sqlite_conn, "removals")
        assert status_counts(rows) == {
            "removed": 2,
            "failed": 1,
            "duplicate": 1,
            "not_on_list": 1,
            "invalid": 2,
        }
        assert rows.loc[rows["status"] == "failed", "stop_id"].notna().all()

    def test_wrong_key_stops_at_the_list_call(self, api, monkeypatch):
        use_sandbox(monkeypatch, api, api_key="not-the-key")
        with pytest.raises(SmsPartnerAuthError):
            _remove(phone_numbers=sorted(api.state.phone_numbers())).execute(context=CONTEXT)
        assert api.stats.total == 1


class FakeHook:
    """Stands in for the hook where the sandbox cannot go: one number listed under two stop ids."""

    def __init__(self) -> None:
        self.removed: list[int] = []

    def get_stop_list_df(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"stop_id": [7, 3, 9], "phone_e164": ["+33612345678", "+33612345678", "+33751234567"]}
        )

    def remove_stop(self, stop_id: int) -> None:
        if stop_id == 9:
            raise StopNotFoundError("Number ID cannot be found", code=4)
        self.removed.append(stop_id)


class TestSeveralStopIds:
    def test_every_stop_id_of_a_number_is_removed(self):
        hook = FakeHook()
        result = remove_stops(pd.Series(["06 12 34 56 78", "0751234567"]), hook, BulkOptions())  # type: ignore[arg-type]
        assert sorted(hook.removed) == [3, 7]
        assert result.outcomes["status"].tolist() == ["removed", "not_on_list"]
        assert result.outcomes["stop_id"].tolist() == [3, 9]
