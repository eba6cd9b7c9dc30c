"""Tests of bulk.results: the results table's shape, checks before any API call, storable values,
concurrent creation and the final-outcome query, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_smspartner.bulk.results import (
    ResultsTable,
    ResultsTableError,
    TaskIdentity,
    final_outcomes_sql,
    storable_text,
)
from airflow_provider_smspartner.operators.smspartner import SmsPartnerAddStopsOperator
from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.sql.tables import ID_LENGTH, INPUT_LENGTH, MESSAGE_LENGTH, RESULT_COLUMNS
from airflow_provider_smspartner.sql.tables import RESULT_KEY as KEY_COLUMNS
from tests.bulk.conftest import drop_results
from tests.conftest import PROJECT_ROOT
from tests.helpers import new_numbers, query_frame, read_results, ti_context

NOW = pd.Timestamp("2026-01-02T03:04:05.123456Z")
IDENTITY = TaskIdentity("bulk_dag", "manual__2026-01-01", "add_stops", -1, 1)


def _inspect(conn_id: str, table: str) -> tuple[list[str], list[str]]:
    engine = resolve_dbapi_hook(conn_id).get_sqlalchemy_engine()
    try:
        inspector = sa.inspect(engine)
        columns = [str(c["name"]).lower() for c in inspector.get_columns(table)]
        key = [str(c).lower() for c in inspector.get_pk_constraint(table)["constrained_columns"]]
    finally:
        engine.dispose()
    return columns, key


class TestStorableText:
    @pytest.mark.parametrize(
        ("value", "limit", "expected"),
        [
            ("06 12\x0034", 20, "06 12\ufffd34"),
            ("\ud800abc", 20, "\ufffdabc"),
            ("\U0001f4f5 ok", 20, "\U0001f4f5 ok"),
            (None, 20, None),
            (12.5, 20, "12.5"),
        ],
        ids=["nul", "lone-surrogate", "emoji-kept", "missing", "not-text"],
    )
    def test_values(self, value, limit, expected):
        assert storable_text(value, limit) == expected

    def test_truncation_is_visible_and_fits(self):
        text = storable_text("x" * 70_000, INPUT_LENGTH)
        assert text is not None and len(text) == INPUT_LENGTH
        assert text.endswith("...[truncated: 70000 characters]")


class TestCreate:
    def test_created_with_its_key_then_reused(self, results_db):
        conn_id, table = results_db
        first = ResultsTable(conn_id, table).prepare(TaskIdentity("d", "r", "t"))
        assert first.created and first.try_number == 1
        columns, key = _inspect(conn_id, table)
        assert columns == list(RESULT_COLUMNS)
        assert sorted(key) == sorted(KEY_COLUMNS)
        first.insert([first._row_tuple(0, "x", None, "invalid", None, None, "empty", None, NOW)])
        # No try number in the context: the next one after those recorded.
        again = ResultsTable(conn_id, table).prepare(TaskIdentity("d", "r", "t"))
        assert not again.created and again.try_number == 2
        first.close()
        again.close()

    def test_longest_airflow_ids_fit_the_key(self, results_db):
        # utf8mb4: 3 x 250 x 4 + 16 = 3,016 bytes, under InnoDB's 3,072.
        conn_id, table = results_db
        ident = TaskIdentity("d" * ID_LENGTH, "r" * ID_LENGTH, "t" * ID_LENGTH, 12, 3)
        results = ResultsTable(conn_id, table).prepare(ident)
        results.insert([results._row_tuple(0, "x", None, "invalid", None, None, None, None, NOW)])
        assert len(results.read()) == 1
        results.close()

    def test_id_longer_than_airflow_allows(self, sqlite_conn):
        with pytest.raises(ValueError, match="run_id is 251 characters long"):
            ResultsTable(sqlite_conn, "results").prepare(TaskIdentity("d", "r" * 251, "t"))

    def test_a_try_records_once(self, results_db):
        conn_id, table = results_db
        results = ResultsTable(conn_id, table).prepare(IDENTITY)
        results.insert([results._row_tuple(0, "x", None, "invalid", None, None, None, None, NOW)])
        with pytest.raises(ResultsTableError, match=r"already holds 1 rows of bulk_dag\.add_stops"):
            ResultsTable(conn_id, table).prepare(IDENTITY)
        results.close()


# The shape of a results table before issue 11 (no task, map index, try or key).
OLD_SHAPE = (
    "input_value TEXT, phone_e164 VARCHAR(64), status VARCHAR(64), stop_id BIGINT, error_code INT, "
    "error_message TEXT, processed_at TEXT, dag_id TEXT, run_id TEXT"
)
NO_KEY = (
    "dag_id VARCHAR(250), run_id VARCHAR(250), task_id VARCHAR(250), map_index INT, try_number INT, "
    "input_row BIGINT, input_value VARCHAR(255), phone_e164 VARCHAR(32), status VARCHAR(32), stop_id BIGINT, "
    "error_code INT, error_message VARCHAR(1000), note VARCHAR(500), decided_at VARCHAR(40)"
)
NARROW = NO_KEY.replace("input_value VARCHAR(255)", "input_value VARCHAR(10)") + (
    ", PRIMARY KEY (dag_id, run_id, task_id, map_index, try_number, input_row)"
)


class TestRefusedBeforeAnyApiCall:
    @pytest.mark.parametrize(
        ("ddl", "match"),
        [(OLD_SHAPE, r"another shape: it lacks column\(s\) \['task_id'"), (NO_KEY, "has the key none")],
        ids=["old-shape", "no-key"],
    )
    def test_table_of_another_shape(self, api, results_db, ddl, match):
        conn_id, table = results_db
        resolve_dbapi_hook(conn_id).run(f"CREATE TABLE {table} ({ddl})")
        op = SmsPartnerAddStopsOperator(
            task_id="add_stops",
            phone_numbers=new_numbers(5, api),
            results_table=table,
            results_conn_id=conn_id,
        )
        with pytest.raises(ResultsTableError, match=match):
            op.execute(ti_context(1))
        assert api.stats.total == 0

    @pytest.mark.parametrize("conn_fixture", ["postgres_conn", "mysql_conn"], ids=["postgres", "mariadb"])
    def test_column_too_narrow_for_what_the_run_may_write(self, api, request, conn_fixture):
        conn_id = request.getfixturevalue(conn_fixture)
        table = f"narrow_{uuid.uuid4().hex[:8]}"
        resolve_dbapi_hook(conn_id).run(f"CREATE TABLE {table} ({NARROW})")
        request.addfinalizer(lambda: drop_results(conn_id, table))
        op = SmsPartnerAddStopsOperator(
            task_id="add_stops",
            phone_numbers=new_numbers(5, api),
            results_table=table,
            results_conn_id=conn_id,
        )
        with pytest.raises(ResultsTableError, match=f"Cannot use results table {table}"):
            op.execute(ti_context(1))
        assert api.stats.total == 0

    def test_missing_schema(self, api, warehouse_conn):
        table = f"no_such_schema_{uuid.uuid4().hex[:6]}.results"
        op = SmsPartnerAddStopsOperator(
            task_id="add_stops",
            phone_numbers=new_numbers(5, api),
            results_table=table,
            results_conn_id=warehouse_conn,
        )
        with pytest.raises(ResultsTableError, match="Cannot use results table no_such_schema_"):
            op.execute(ti_context(1))
        assert api.stats.total == 0

    def test_no_privilege_to_write(self, api, postgres_conn, monkeypatch, request):
        suffix = uuid.uuid4().hex[:8]
        table, role = f"readonly_{suffix}", f"smspartner_reader_{suffix}"
        admin = resolve_dbapi_hook(postgres_conn)
        admin.run(f"CREATE ROLE {role} LOGIN")
        # Finalizers run last-in first-out: the table (and so the grant) goes before the role.
        request.addfinalizer(lambda: admin.run(f"DROP ROLE IF EXISTS {role}"))
        ResultsTable(postgres_conn, table).prepare(IDENTITY).close()
        request.addfinalizer(lambda: drop_results(postgres_conn, table))
        admin.run(f"GRANT SELECT ON {table} TO {role}")
        reader = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": role}
        monkeypatch.setenv("AIRFLOW_CONN_READER", json.dumps({**reader, "schema": "test"}))
        op = SmsPartnerAddStopsOperator(
            task_id="add_stops",
            phone_numbers=new_numbers(5, api),
            results_table=table,
            results_conn_id="reader",
        )
        with pytest.raises(ResultsTableError, match="permission denied"):
            op.execute(ti_context(2))
        assert api.stats.total == 0


class TestStorableValuesInTheTable:
    def test_every_value_is_stored(self, api, results_db):
        """NUL, a lone surrogate, a 70,000-character input, a 70 KB API error with a NUL in it."""
        conn_id, table = results_db
        valid = new_numbers(1, api)[0]
        values = ["06 12 34\x00 56 78", "\ud800 06 12", "7" * 70_000, "\U0001f4f5", valid]
        message = "refus\u00e9 \u0000 " + "\u00e9" * 70_000
        api.respond(
            json.dumps({"success": False, "code": 9, "message": message}), 400, endpoint="stop-sms/add"
        )
        op = SmsPartnerAddStopsOperator(
            task_id="add_stops",
            phone_numbers=values,
            results_table=table,
            results_conn_id=conn_id,
            max_failed=1,
        )
        summary = op.execute(ti_context(1))
        assert (summary["invalid"], summary["failed"]) == (4, 1)
        rows = read_results(conn_id, table).sort_values("input_row").reset_index(drop=True)
        assert rows["input_value"].tolist()[:2] == ["06 12 34\ufffd 56 78", "\ufffd 06 12"]
        assert rows.loc[2, "input_value"].endswith("...[truncated: 70000 characters]")
        assert len(rows.loc[2, "input_value"]) == INPUT_LENGTH
        assert rows.loc[3, "input_value"] == "\U0001f4f5"
        failed = rows.loc[4]
        assert failed["status"] == "failed" and failed["phone_e164"] == valid
        assert 0 < len(failed["error_message"]) <= MESSAGE_LENGTH
        assert "\x00" not in failed["error_message"]

    def test_any_error_message_is_stored(self, results_db):
        """Whatever a transport error or a future API message holds: 70 KB, NUL, lone surrogates."""
        conn_id, table = results_db
        results = ResultsTable(conn_id, table).prepare(IDENTITY)
        message = "boom \x00 \ud83d " + "\u00e9" * 70_000
        results.insert([results._row_tuple(0, "x", None, "failed", 2**70, 2**40, message, message, NOW)])
        (row,) = results.read().itertuples(index=False)
        assert len(row.error_message) == MESSAGE_LENGTH
        assert row.error_message.startswith("boom \ufffd \ufffd \u00e9")
        assert row.error_message.endswith("...[truncated: 70009 characters]")
        assert (row.stop_id, row.error_code) == (None, None)  # out of the columns' range: not guessed
        results.close()


def _answer(child: subprocess.Popen[str]) -> str:
    """The next line the child meant for the test (``@@...``), skipping its log lines."""
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("@@"):
            return line[2:].strip()
    raise AssertionError(f"the child exited with {child.wait()}")


def _start_child(conn_id: str, map_index: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.bulk.results_child", conn_id, str(map_index)],
        cwd=PROJECT_ROOT,
        env=dict(os.environ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # a child interpreter
class TestConcurrentCreation:
    def test_two_processes_create_the_same_table_at_once(self, warehouse_conn):
        """Two mapped tasks' first run: both prepare a missing table at the same instant, several times."""
        children = [_start_child(warehouse_conn, index) for index in (0, 1)]
        tables = [f"race_{uuid.uuid4().hex[:10]}" for _ in range(6)]
        try:
            for child in children:
                assert _answer(child) == "ready"
            for table in tables:
                start_at = time.time() + 0.3
                for child in children:
                    assert child.stdin is not None
                    child.stdin.write(f"{table} {start_at}\n")
                    child.stdin.flush()
                answers = [_answer(child) for child in children]
                assert all(a.startswith("ok") for a in answers), (table, answers)
                assert sorted(read_results(warehouse_conn, table)["map_index"]) == [0, 1]
        finally:
            for child in children:
                if child.stdin:
                    child.stdin.close()
                child.wait(timeout=60)
            drop_results(warehouse_conn, *tables)


def _row(results: Any, row: int, phone: str | None, status: str, stop_id: int | None = None) -> tuple:
    return results._row_tuple(row, phone or "junk", phone, status, stop_id, None, None, None, NOW)


class TestFinalOutcomes:
    def test_one_final_outcome_per_input(self, results_db):
        """Try 1 added X and was killed with Y pending (then settled ``added`` by try 2's recovery);
        try 2 sent Z again; try 3 was killed after recording one row. Another map index beside."""
        conn_id, table = results_db
        x, y, z, w = "+33612345671", "+33612345672", "+33612345673", "+33612345674"
        table_config = ResultsTable(conn_id, table)
        tries = {}
        for number in (1, 2, 3):
            tries[number] = table_config.prepare(replace_try(IDENTITY, number))
        tries[1].insert(
            [
                _row(tries[1], 0, x, "added", 11),
                _row(tries[1], 1, y, "added", 12),
                _row(tries[1], 2, z, "not_processed"),
                _row(tries[1], 3, w, "failed"),
                _row(tries[1], 4, None, "invalid"),
            ]
        )
        tries[2].insert(
            [
                _row(tries[2], 0, x, "skipped_existing", 11),
                _row(tries[2], 1, y, "skipped_existing", 12),
                _row(tries[2], 2, z, "added", 13),
                _row(tries[2], 3, w, "failed"),
                _row(tries[2], 4, None, "invalid"),
                _row(tries[2], 5, x, "duplicate"),
            ]
        )
        tries[3].insert([_row(tries[3], 0, x, "skipped_existing", 11)])
        other = table_config.prepare(TaskIdentity("bulk_dag", "manual__2026-01-01", "add_stops", 0, 1))
        other.insert([_row(other, 0, w, "added", 14)])

        final = query_frame(
            conn_id, f"SELECT * FROM ({final_outcomes_sql(table)}) f ORDER BY map_index, input_row"
        )
        mine = final[final["map_index"] == -1]
        assert mine["input_row"].tolist() == [0, 1, 2, 3, 4, 5]
        assert mine["status"].tolist() == ["added", "added", "added", "failed", "invalid", "duplicate"]
        assert mine["decided_by_try"].tolist() == [1, 1, 2, 2, 2, 2]
        assert mine["latest_try"].tolist() == [3, 2, 2, 2, 2, 2]
        assert mine["stop_id"].tolist()[:3] == [11, 12, 13]
        assert final.loc[final["map_index"] == 0, "status"].tolist() == ["added"]

        for results in (*tries.values(), other):
            results.close()


def replace_try(identity: TaskIdentity, try_number: int) -> TaskIdentity:
    from dataclasses import replace

    return replace(identity, try_number=try_number)
