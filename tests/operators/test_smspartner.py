"""Tests of operators.smspartner: the stop-list operator and the bulk add and remove operators."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from airflow.exceptions import AirflowException

from airflow_provider_smspartner.bulk.pipeline import BulkOptions, remove_stops
from airflow_provider_smspartner.exceptions import SmsPartnerAuthError, StopNotFoundError
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.operators.smspartner import (
    SmsPartnerAddStopsOperator,
    SmsPartnerRemoveStopsOperator,
    SmsPartnerStopListOperator,
)
from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from tests.conftest import TEST_API_KEY
from tests.helpers import (
    API_REJECTED,
    CONTEXT,
    drop_table,
    inject_faults,
    national,
    new_numbers,
    nonzero,
    read_results,
    status_counts,
    ti_context,
    use_sandbox,
)

COLUMNS = ["stop_id", "phone_number", "phone_e164", "created_at"]


ADD_STATUSES = ("invalid", "duplicate", "skipped_existing", "added", "already_present", "failed", "would_add")
SAME_NUMBER = ["06 12 34 56 78", "+33612345678", "0033612345678", "06.12.34.56.78", 33612345678]
OTHER_VALID = ["0751234567", "+49 151 12345678", "+1 650 253 0000", "07-61-23-45-67", 612345679]
JUNK = ["abc", "", None, "123", "+999123456789", "06 12"]


REMOVE_STATUSES = ("invalid", "duplicate", "not_on_list", "removed", "failed", "would_remove")


@pytest.mark.usefixtures("smspartner_conn")
class TestSmsPartnerStopListOperator:
    def test_returns_dataframe(self, sandbox):
        frame = SmsPartnerStopListOperator(task_id="fetch").execute({})
        assert isinstance(frame, pd.DataFrame)
        assert list(frame.columns) == COLUMNS
        assert set(frame["phone_number"]) == sandbox.state.phone_numbers()

    @pytest.mark.parametrize("output_format", ["parquet", "csv"])
    @pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
    def test_writes_file_and_returns_path(self, sandbox, tmp_path, output_format, as_uri):
        target = tmp_path / "out" / f"stops.{output_format}"
        output_path = target.as_uri() if as_uri else str(target)
        result = SmsPartnerStopListOperator(
            task_id="fetch", output_path=output_path, output_format=output_format
        ).execute({})
        assert result.endswith(f"out/stops.{output_format}")
        frame = (
            pd.read_parquet(target)
            if output_format == "parquet"
            else pd.read_csv(target, dtype={"phone_number": "str", "phone_e164": "str"})
        )
        assert list(frame.columns) == COLUMNS
        assert set(frame["phone_number"]) == sandbox.state.phone_numbers()
        expected = {stop_id: created for stop_id, _, created in sandbox.state.list_entries()}
        created = pd.to_datetime(frame["created_at"], utc=True)
        assert {s: c.to_pydatetime() for s, c in zip(frame["stop_id"], created, strict=True)} == expected

    def test_bad_output_format(self, tmp_path):
        op = SmsPartnerStopListOperator(
            task_id="fetch", output_path=str(tmp_path / "x"), output_format="xlsx"
        )
        with pytest.raises(ValueError, match="output_format must be one of"):
            op.execute({})

    def test_templated_fields(self):
        assert {"output_path", "output_format", "smspartner_conn_id"} <= set(
            SmsPartnerStopListOperator.template_fields
        )


def _add(**kwargs: Any) -> SmsPartnerAddStopsOperator:
    kwargs.setdefault("max_workers", 8)
    return SmsPartnerAddStopsOperator(task_id="add_stops", **kwargs)


def _mixed(sandbox: Any) -> tuple[list[Any], set[str]]:
    """A messy input and the E.164 numbers it should add: duplicates across formats, numbers
    already listed (E.164 and national forms), junk, and 120 new numbers in mixed formats."""
    listed = sorted(sandbox.state.phone_numbers())[:2]
    bulk = new_numbers(120, sandbox)
    bulk_inputs = [national(n) if i % 3 == 0 else n for i, n in enumerate(bulk)]
    values = [*SAME_NUMBER, *OTHER_VALID, listed[0], national(listed[1]), *JUNK, *bulk_inputs, bulk[5]]
    expected = {"+33612345678", "+33751234567", "+4915112345678", "+16502530000", "+33761234567"}
    expected |= {"+33612345679", *bulk}
    return values, expected


@pytest.fixture
def faulty_api(api) -> Any:
    """The sandbox with random faults on stop-sms/add (500s, drops, lost responses, 429s)."""
    inject_faults(api, "stop-sms/add")
    return api


@pytest.fixture
def results_db(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """``(conn_id, table)`` of a fresh results table on the parametrized database; dropped after."""
    conn_id = request.getfixturevalue(request.param)
    table = f"bulk_results_{uuid.uuid4().hex[:10]}"
    yield conn_id, table
    drop_table(conn_id, table)


class TestAddMixedInputWithFaults:
    def test_every_number_ends_on_the_list_exactly_once(self, faulty_api):
        api = faulty_api
        before = api.state.phone_numbers()
        values, expected = _mixed(api)
        summary = _add(phone_numbers=values).execute(context=CONTEXT)

        assert set(summary) == {"total", *ADD_STATUSES}
        assert summary["total"] == len(values) == sum(summary[s] for s in ADD_STATUSES)
        assert summary["invalid"] == len(JUNK)
        assert summary["duplicate"] == len(SAME_NUMBER) - 1 + 1  # the repeated bulk number
        assert summary["skipped_existing"] == 2
        assert summary["added"] + summary["already_present"] == len(expected)
        assert (summary["failed"], summary["would_add"]) == (0, 0)
        assert api.state.phone_numbers() == before | expected
        assert api.stats.adds_applied == len(expected)
        assert sum(api.stats.by_fault.values()) > 0, "the faults did not fire: the test proves nothing"

    def test_rerun_sends_no_add(self, faulty_api):
        api = faulty_api
        values, expected = _mixed(api)
        _add(phone_numbers=values).execute(context=CONTEXT)
        api.reset_stats()
        summary = _add(phone_numbers=values).execute(context=CONTEXT)
        assert api.stats.count("stop-sms/add") == 0
        assert summary["skipped_existing"] == len(expected) + 2
        assert summary["added"] == summary["already_present"] == 0

    def test_dry_run_sends_no_add(self, faulty_api):
        api = faulty_api
        before = api.state.snapshot()
        values, expected = _mixed(api)
        summary = _add(phone_numbers=values, dry_run=True).execute(context=CONTEXT)
        assert api.stats.count("stop-sms/add") == 0
        assert api.state.snapshot() == before
        assert nonzero(summary) == {
            "invalid": len(JUNK),
            "duplicate": len(SAME_NUMBER),
            "skipped_existing": 2,
            "would_add": len(expected),
        }

    def test_without_skip_existing_listed_numbers_come_back_already_present(self, api):
        listed = sorted(api.state.phone_numbers())
        summary = _add(phone_numbers=listed, skip_existing=False).execute(context=CONTEXT)
        assert api.stats.count("stop-sms/list") == 0
        assert nonzero(summary) == {"already_present": len(listed)}


# Every source yields these rows: 3 distinct valid numbers, a duplicate and a junk value.
SOURCE_ROWS = ["06 12 34 56 78", "0751234567", "+4915112345678", "abc", "+33612345678"]
SOURCE_SUMMARY = {"invalid": 1, "duplicate": 1, "added": 3}
SOURCE_FRAME = pd.DataFrame({"customer_id": range(1, 6), "phone": SOURCE_ROWS})


def _sql_source(request: pytest.FixtureRequest, conn_fixture: str) -> dict[str, Any]:
    conn_id = request.getfixturevalue(conn_fixture)
    table = f"contacts_{uuid.uuid4().hex[:10]}"
    hook = resolve_dbapi_hook(conn_id)
    hook.run(f"CREATE TABLE {table} (customer_id INTEGER, phone VARCHAR(40))")
    hook.insert_rows(table, list(SOURCE_FRAME.itertuples(index=False, name=None)))
    request.addfinalizer(lambda: drop_table(conn_id, table))
    return {"sql": f"SELECT customer_id, phone FROM {table} ORDER BY customer_id", "sql_conn_id": conn_id}


def _file_source(tmp_path: Path, name: str, as_uri: bool = False) -> dict[str, Any]:
    path = tmp_path / name
    if name.endswith(".parquet"):
        SOURCE_FRAME.to_parquet(path, index=False)
    else:
        SOURCE_FRAME.to_csv(path, index=False)
    return {"source_path": path.as_uri() if as_uri else str(path)}


SOURCES: dict[str, Callable[[pytest.FixtureRequest, Path], dict[str, Any]]] = {
    "list": lambda request, tmp: {"phone_numbers": list(SOURCE_ROWS)},
    "tuple": lambda request, tmp: {"phone_numbers": tuple(SOURCE_ROWS)},
    "dataframe-from-xcom": lambda request, tmp: {"phone_numbers": SOURCE_FRAME.copy()},
    "list-of-dicts-from-xcom": lambda request, tmp: {"phone_numbers": SOURCE_FRAME.to_dict("records")},
    "sql-sqlite": lambda request, tmp: _sql_source(request, "sqlite_conn"),
    "sql-postgres": lambda request, tmp: _sql_source(request, "postgres_conn"),
    "csv-file": lambda request, tmp: _file_source(tmp, "contacts.csv"),
    "parquet-file": lambda request, tmp: _file_source(tmp, "contacts.parquet"),
    "csv-gz-file-uri": lambda request, tmp: _file_source(tmp, "contacts.csv.gz", as_uri=True),
}


class TestAddSources:
    @pytest.mark.parametrize(
        "kind",
        [pytest.param(k, id=k, marks=[pytest.mark.db] if k == "sql-postgres" else []) for k in SOURCES],
    )
    def test_source(self, api, request, tmp_path, kind):
        kwargs = SOURCES[kind](request, tmp_path)
        if kind not in ("list", "tuple"):
            kwargs["phone_column"] = "phone"
        summary = _add(**kwargs).execute(context=CONTEXT)
        assert summary["total"] == len(SOURCE_ROWS)
        assert nonzero(summary) == SOURCE_SUMMARY
        assert {"+33612345678", "+33751234567", "+4915112345678"} <= api.state.phone_numbers()

    def test_csv_keeps_leading_zeros(self, api, tmp_path):
        path = tmp_path / "numbers.csv"
        path.write_text("phone\n0751234567\n0612345678\n")
        summary = _add(source_path=str(path)).execute(context=CONTEXT)
        assert summary["added"] == 2

    def test_expand_over_a_list_of_lists(self, api):
        from airflow.sdk import DAG
        from airflow.sdk.definitions.mappedoperator import MappedOperator

        chunks = [SOURCE_ROWS[:3], SOURCE_ROWS[3:]]
        with DAG("bulk_expand", schedule=None):
            mapped = SmsPartnerAddStopsOperator.partial(task_id="add", pool="smspartner_api").expand(
                phone_numbers=chunks
            )
        assert isinstance(mapped, MappedOperator)
        summaries = [mapped.unmap({"phone_numbers": chunk}).execute(context=CONTEXT) for chunk in chunks]
        assert [nonzero(s) for s in summaries] == [{"added": 3}, {"invalid": 1, "skipped_existing": 1}]


class TestAddResultsTable:
    @pytest.mark.parametrize(
        "results_db", ["sqlite_conn", "postgres_conn"], ids=["sqlite", "postgres"], indirect=True
    )
    def test_one_row_per_input_value_per_run(self, faulty_api, results_db):
        api = faulty_api
        conn_id, table = results_db
        values, _ = _mixed(api)
        summary = _add(phone_numbers=values, results_table=table, results_conn_id=conn_id).execute(
            context=CONTEXT
        )
        assert summary["results_table"] == table
        rows = read_results(conn_id, table)
        assert len(rows) == len(values)
        assert status_counts(rows) == nonzero(summary)
        assert set(rows["dag_id"]) == {"bulk_dag"}
        assert set(rows["run_id"]) == {CONTEXT["run_id"]}
        added = rows[rows["status"] == "added"]
        assert added["stop_id"].notna().all()
        assert rows.loc[rows["status"] == "skipped_existing", "stop_id"].notna().all()
        invalid = rows[rows["status"] == "invalid"]
        assert set(invalid["error_message"]) >= {"empty", "not_a_number"}
        assert pd.to_datetime(rows["decided_at"], utc=True, format="mixed").notna().all()

        assert set(rows["task_id"]) == {"add_stops"}
        assert set(rows["map_index"]) == {-1}
        assert set(rows["try_number"]) == {1}  # a context without a task instance: the first try
        assert sorted(rows["input_row"]) == list(range(len(values)))

        rerun = _add(phone_numbers=values, results_table=table, results_conn_id=conn_id).execute(
            context=CONTEXT
        )
        rows = read_results(conn_id, table)
        assert len(rows) == 2 * len(values)
        assert rows.groupby("try_number").size().to_dict() == {1: len(values), 2: len(values)}
        assert rerun["added"] == 0

    def test_rows_are_keyed_by_the_task_instance_and_try(self, api, sqlite_conn):
        values = new_numbers(3, api)
        for map_index, try_number in ((0, 1), (1, 1), (1, 2)):
            _add(phone_numbers=values, results_table="adds", results_conn_id=sqlite_conn).execute(
                context=ti_context(try_number, map_index=map_index, task_id="add_stops")
            )
        rows = read_results(sqlite_conn, "adds")
        keys = rows.groupby(["dag_id", "run_id", "task_id", "map_index", "try_number"]).size()
        assert keys.to_dict() == {
            ("bulk_dag", "manual__2026-01-01", "add_stops", 0, 1): 3,
            ("bulk_dag", "manual__2026-01-01", "add_stops", 1, 1): 3,
            ("bulk_dag", "manual__2026-01-01", "add_stops", 1, 2): 3,
        }
        assert api.stats.adds_applied == 3

    def test_sql_conn_id_is_the_default_results_connection(self, api, sqlite_conn):
        hook = resolve_dbapi_hook(sqlite_conn)
        hook.run("CREATE TABLE optouts (phone TEXT)")
        hook.insert_rows("optouts", [("0612345678",), ("junk",)])
        _add(sql="SELECT phone FROM optouts", sql_conn_id=sqlite_conn, results_table="add_results").execute(
            context=CONTEXT
        )
        assert status_counts(read_results(sqlite_conn, "add_results")) == {"added": 1, "invalid": 1}


class TestAddFailures:
    def test_wrong_key_stops_at_once(self, sandbox, monkeypatch, sqlite_conn):
        use_sandbox(monkeypatch, sandbox, api_key="not-the-key")
        numbers = new_numbers(300, sandbox)
        op = _add(
            phone_numbers=numbers,
            skip_existing=False,
            results_table="auth_results",
            results_conn_id=sqlite_conn,
        )
        with pytest.raises(SmsPartnerAuthError, match="Invalid API key") as raised:
            op.execute(context=CONTEXT)
        assert sandbox.stats.count("stop-sms/add") <= op.max_workers
        rows = read_results(sqlite_conn, "auth_results")
        assert len(rows) == len(numbers)
        counts = status_counts(rows)
        assert set(counts) == {"failed", "not_processed"}
        assert counts["failed"] == sandbox.stats.count("stop-sms/add")
        assert set(rows.loc[rows["status"] == "failed", "error_code"]) == {10}
        assert "not-the-key" not in str(raised.value)
        assert not rows["error_message"].fillna("").str.contains("not-the-key").any()

    def test_wrong_key_stops_at_the_list_call(self, sandbox, monkeypatch):
        use_sandbox(monkeypatch, sandbox, api_key="not-the-key")
        with pytest.raises(SmsPartnerAuthError):
            _add(phone_numbers=new_numbers(100, sandbox)).execute(context=CONTEXT)
        assert sandbox.stats.total == 1

    @staticmethod
    def _rejected_by_api(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
        use_sandbox(monkeypatch, sandbox)
        return {"phone_numbers": [*new_numbers(20, sandbox), *API_REJECTED], "expected_code": 9}

    @staticmethod
    def _persistent_server_errors(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
        # One worker and one retry: the first three numbers each meet two 500s in a row.
        use_sandbox(monkeypatch, sandbox, max_retries=1)
        sandbox.inject("server_error", count=6, endpoint="stop-sms/add")
        return {"phone_numbers": new_numbers(23, sandbox), "max_workers": 1, "expected_code": None}

    @pytest.mark.parametrize("max_failed", [0, 3], ids=["fails-over-max", "tolerated"])
    @pytest.mark.parametrize(
        "setup", ["_rejected_by_api", "_persistent_server_errors"], ids=["api-code-9", "persistent-500"]
    )
    def test_max_failed(self, sandbox, monkeypatch, sqlite_conn, setup, max_failed):
        kwargs = getattr(self, setup)(sandbox, monkeypatch)
        expected_code = kwargs.pop("expected_code")
        op = _add(results_table="failures", results_conn_id=sqlite_conn, max_failed=max_failed, **kwargs)
        if max_failed < 3:
            with pytest.raises(AirflowException, match=r"3 of 23 numbers failed \(max_failed=0\).*failures"):
                op.execute(context=CONTEXT)
        else:
            assert nonzero(op.execute(context=CONTEXT)) == {"added": 20, "failed": 3}
        rows = read_results(sqlite_conn, "failures")
        assert status_counts(rows) == {"added": 20, "failed": 3}
        failed = rows[rows["status"] == "failed"]
        if expected_code is None:
            assert failed["error_code"].isna().all()
            assert failed["error_message"].str.contains("HTTP 500").all()
        else:
            assert set(failed["error_code"]) == {expected_code}
            assert set(failed["phone_e164"]) == set(API_REJECTED)


class TestBulkArguments:
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({}, "exactly one source.*got none"),
            ({"phone_numbers": ["x"], "source_path": "a.csv"}, "got phone_numbers and source_path"),
            ({"sql": "SELECT 1"}, "sql needs sql_conn_id"),
            (
                {"phone_numbers": ["x"], "results_table": "results"},
                "results_table 'results' needs .*results_conn_id",
            ),
            ({"phone_numbers": ["x"], "max_workers": 0}, "max_workers must be an integer >= 1"),
            ({"phone_numbers": ["x"], "max_failed": -1}, "max_failed must be an integer >= 0"),
        ],
        ids=[
            "no-source",
            "two-sources",
            "sql-without-conn",
            "results-without-conn",
            "zero-workers",
            "negative-max-failed",
        ],
    )
    def test_refused_when_built(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            _add(**kwargs)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"phone_numbers": SOURCE_FRAME}, r"2 columns \['customer_id', 'phone'\]; set phone_column"),
            (
                {"phone_numbers": SOURCE_FRAME, "phone_column": "mobile"},
                r"'mobile' is not a column.*'customer_id', 'phone'",
            ),
            ({"phone_numbers": ["0612345678"], "default_region": "XX"}, "default_region 'XX'"),
            (
                {"phone_numbers": ["0612345678"], "results_table": "bad name;", "results_conn_id": "db"},
                "Invalid table name",
            ),
            ({"phone_numbers": "0612345678"}, "single string"),
        ],
        ids=["ambiguous-frame", "unknown-column", "unknown-region", "bad-results-table", "string"],
    )
    def test_refused_before_any_api_call(self, api, kwargs, match):
        with pytest.raises(ValueError, match=match):
            _add(**kwargs).execute(context=CONTEXT)
        assert api.stats.total == 0

    def test_nothing_is_touched_when_built(self):
        op = _add(sql="SELECT phone FROM nowhere", sql_conn_id="no_such_db", smspartner_conn_id="no_such_api")
        assert op.sql_conn_id == "no_such_db"

    def test_templated_fields(self):
        names = "phone_numbers sql sql_conn_id source_path phone_column results_table results_conn_id"
        assert set(SmsPartnerAddStopsOperator.template_fields) >= {
            *names.split(),
            "default_region",
            "smspartner_conn_id",
        }

    @pytest.mark.parametrize("native", [False, True], ids=["string-rendering", "native-rendering"])
    def test_rendering_keeps_numbers_as_text(self, native):
        op = _add(phone_numbers=["+33612345678", "{{ params.extra }}"], source_path=None)
        op.render_template_as_native_obj = native
        op.render_template_fields({"params": {"extra": "0751234567"}})  # type: ignore[arg-type]
        assert op.phone_numbers == ["+33612345678", "0751234567"]

    def test_summary_is_json_serialisable(self, api):
        summary = _add(phone_numbers=["0612345678"]).execute(context={})
        assert json.loads(json.dumps(summary)) == summary
        assert TEST_API_KEY not in json.dumps(summary)


def _remove(**kwargs: Any) -> SmsPartnerRemoveStopsOperator:
    return SmsPartnerRemoveStopsOperator(task_id="remove_stops", **kwargs)


def _mixed_removals(sandbox: Any) -> tuple[list[Any], list[str]]:
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
        values, listed = _mixed_removals(api)
        summary = _remove(phone_numbers=values).execute(context=CONTEXT)
        assert set(summary) == {"total", *REMOVE_STATUSES}
        assert summary["total"] == len(values) == sum(summary[s] for s in REMOVE_STATUSES)
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
        values, _ = _mixed_removals(api)
        _remove(phone_numbers=values).execute(context=CONTEXT)
        api.reset_stats()
        summary = _remove(phone_numbers=values).execute(context=CONTEXT)
        assert api.stats.count("stop-sms/delete") == 0
        assert nonzero(summary) == {"duplicate": 1, "not_on_list": 4, "invalid": 2}

    def test_dry_run_deletes_nothing(self, api):
        before = api.state.snapshot()
        values, _ = _mixed_removals(api)
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
        values, _ = _mixed_removals(api)
        summary = _remove(
            phone_numbers=values, results_table="removals", results_conn_id=sqlite_conn
        ).execute(context=CONTEXT)
        rows = read_results(sqlite_conn, "removals")
        assert len(rows) == len(values)
        assert status_counts(rows) == nonzero(summary)
        assert rows.loc[rows["status"] == "removed", "stop_id"].notna().all()

    def test_same_sources_as_add(self, api, sqlite_conn):
        from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook

        listed = sorted(api.state.phone_numbers())[:2]
        hook = resolve_dbapi_hook(sqlite_conn)
        hook.run("CREATE TABLE optouts_revoked (id INTEGER, phone TEXT)")
        hook.insert_rows("optouts_revoked", [(1, national(listed[0])), (2, listed[1])])
        summary = _remove(
            sql="SELECT id, phone FROM optouts_revoked", sql_conn_id=sqlite_conn, phone_column="PHONE"
        ).execute(context=CONTEXT)
        assert nonzero(summary) == {"removed": 2}


class TestRemoveFailures:
    def test_max_failed(self, api, monkeypatch, sqlite_conn):
        use_sandbox(monkeypatch, api, max_retries=1)
        api.inject("server_error", count=2, endpoint="stop-sms/delete")
        values, _ = _mixed_removals(api)
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


class TestStopListXComWarning:
    """A DataFrame of more than 100,000 stops bound for the metadata database gets one warning."""

    @pytest.mark.parametrize(
        ("rows", "output_path", "backend", "warned"),
        [
            (100_001, False, None, True),
            (100_000, False, None, False),
            (100_001, True, None, False),
            (100_001, False, "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend", False),
        ],
        ids=["large", "at-the-limit", "file", "object-storage-backend"],
    )
    def test_warning(self, monkeypatch, tmp_path, rows, output_path, backend, warned):
        from unittest import mock

        frame = pd.DataFrame(
            {
                "stop_id": range(1, rows + 1),
                "phone_number": "+33612345678",
                "phone_e164": "+33612345678",
                "created_at": pd.Timestamp("2026-01-01", tz="UTC"),
            }
        )
        monkeypatch.setattr(SmsPartnerHook, "get_stop_list_df", lambda self: frame)
        if backend:
            monkeypatch.setenv("AIRFLOW__CORE__XCOM_BACKEND", backend)
            monkeypatch.setenv("AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH", (tmp_path / "xcom").as_uri())
        log = mock.MagicMock()
        monkeypatch.setattr(SmsPartnerStopListOperator, "log", property(lambda self: log))
        path = str(tmp_path / "stops.parquet") if output_path else None
        SmsPartnerStopListOperator(task_id="fetch", output_path=path).execute({})
        warnings = [c.args[0] % c.args[1:] for c in log.warning.call_args_list]
        if not warned:
            assert warnings == []
            return
        assert len(warnings) == 1
        assert warnings[0].startswith("Returning 100001 stops as a DataFrame through XCom")
        assert "output_path" in warnings[0] and "XComObjectStorageBackend" in warnings[0]
