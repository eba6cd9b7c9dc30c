"""The campaign gate fails closed: a collapsed list, an odd list row or a shared target never lets
an opted-out person through. Over the sandbox (real loopback HTTP) and real databases.

Each class reproduces one finding of the attack on the gate as it stood: an empty or collapsed
list passed everyone; stops with invisible characters dropped out silently; one target named for
two outputs put every stopped number in the "safe" output.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from airflow_provider_smspartner.exceptions import StopListGuardError
from airflow_provider_smspartner.operators.smspartner import SmsPartnerSuppressAudienceOperator
from airflow_provider_smspartner.suppression import gate
from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator
from tests.conftest import PROJECT_ROOT
from tests.helpers import CONTEXT, drop_table, read_results, serve_list_rows, ti_context

CREATED = "2026-01-05 10:00:00"


def _gate(**kwargs: Any) -> SmsPartnerSuppressAudienceOperator:
    return SmsPartnerSuppressAudienceOperator(task_id="gate", **kwargs)


def _people(count: int) -> list[str]:
    return [f"+3361{i:07d}" for i in range(count)]


def _list_rows(numbers: list[str]) -> list[tuple[int, str, str]]:
    return [(i + 1, number, CREATED) for i, number in enumerate(numbers)]


@pytest.fixture
def tables(warehouse_conn: str) -> Iterator[tuple[str, dict[str, str]]]:
    suffix = uuid.uuid4().hex[:8]
    names = {kind: f"gate_{kind}_{suffix}" for kind in ("kept", "audit", "stops")}
    names["stops_runs"] = f"{names['stops']}_runs"
    yield warehouse_conn, names
    for name in names.values():
        drop_table(warehouse_conn, name)


# ------------------------------------------------------------------------------------ the guard
class TestCollapsedList:
    """An empty list kept 100 of 100 opted-out people; a list cut to 5 % kept 75 of 100."""

    def test_an_empty_list_is_refused_without_any_reference(self, api, tmp_path):
        api.state.clear()
        out = tmp_path / "safe.csv"
        with pytest.raises(StopListGuardError, match=r"empty SMS Partner stop list.*allow_empty_list=True"):
            _gate(phone_numbers=_people(100), output_path=str(out)).execute(context=CONTEXT)
        assert not out.exists()
        assert not list(tmp_path.iterdir())  # no temporary file left either

    def test_allow_empty_list_accepts_it(self, api, tmp_path):
        api.state.clear()
        summary = _gate(
            phone_numbers=_people(3), output_path=str(tmp_path / "safe.csv"), allow_empty_list=True
        ).execute(context=CONTEXT)
        assert (summary["kept"], summary["rows_in_list"]) == (3, 0)

    def test_a_collapsed_list_is_refused_against_the_last_accepted_check(self, api, tables):
        conn_id, names = tables
        people = _people(100)
        api.state.clear()
        api.state.seed_numbers(people)
        kwargs = {"output_table": names["kept"], "output_conn_id": conn_id, "audit_table": names["audit"]}
        context = ti_context(1, task_id="gate", dag_id="campaign")
        first = _gate(phone_numbers=people, **kwargs).execute(context=context)
        assert (first["kept"], first["stopped"]) == (0, 100)

        for entry in api.state.list_entries()[5:]:  # the list collapses to 5 %
            api.state.remove(entry.stop_id)
        with pytest.raises(StopListGuardError, match=r"holds 5 stops, 95 fewer than the 100 of audit table"):
            _gate(phone_numbers=people, **kwargs).execute(
                context=ti_context(1, task_id="gate", dag_id="campaign")
            )

        assert read_results(conn_id, names["kept"]).empty  # the previous safe audience, untouched
        audit = read_results(conn_id, names["audit"]).sort_values("checked_at")
        assert audit["status"].tolist() == ["accepted", "refused"]
        refused = audit.iloc[-1]
        assert int(refused["rows_in_list"]) == 5 and "max_removed_fraction=0.2" in refused["reason"]
        assert pd.isna(refused["kept"]) and pd.isna(refused["output"])

    def test_the_reference_is_this_task_not_another(self, api, tables):
        conn_id, names = tables
        api.state.clear()
        api.state.seed_numbers(_people(100))
        kwargs = {"mode": "check", "audit_table": names["audit"], "audit_conn_id": conn_id}
        _gate(phone_numbers=["+33699999999"], **kwargs).execute(context=ti_context(1, task_id="other"))
        for entry in api.state.list_entries()[10:]:
            api.state.remove(entry.stop_id)
        # Another task's check is no reference for this one: only the empty list would be refused.
        summary = _gate(phone_numbers=["+33699999999"], **kwargs).execute(
            context=ti_context(1, task_id="gate")
        )
        assert summary["rows_in_list"] == 10

    def test_a_share_within_max_removed_fraction_passes(self, api, tables, monkeypatch):
        conn_id, names = tables
        # One check a minute: SQLite keeps whole seconds, and a tie takes the larger list.
        clock = iter(pd.date_range("2026-12-07 10:00", periods=10, freq="min", tz="UTC").to_pydatetime())
        monkeypatch.setattr(gate, "utc_now", lambda: next(clock))
        api.state.clear()
        api.state.seed_numbers(_people(10))
        kwargs = {"mode": "check", "audit_table": names["audit"], "audit_conn_id": conn_id}
        _gate(phone_numbers=["+33699999999"], **kwargs).execute(context=CONTEXT)
        for entry in api.state.list_entries()[8:]:  # 2 of 10 gone: exactly 0.2, allowed
            api.state.remove(entry.stop_id)
        assert _gate(phone_numbers=["+33699999999"], **kwargs).execute(context=CONTEXT)["rows_in_list"] == 8
        api.state.remove(api.state.list_entries()[0].stop_id)  # 3 of 10 against the last accepted (8): 1 of 8
        assert _gate(phone_numbers=["+33699999999"], **kwargs).execute(context=CONTEXT)["rows_in_list"] == 7
        with pytest.raises(StopListGuardError):
            api.state.clear()
            api.state.seed_numbers(_people(2))
            _gate(phone_numbers=["+33699999999"], **kwargs).execute(context=CONTEXT)
        summary = _gate(phone_numbers=["+33699999999"], max_removed_fraction=None, **kwargs).execute(
            context=CONTEXT
        )
        assert summary["rows_in_list"] == 2

    def test_without_an_audit_table_the_extracts_run_log_is_the_reference(self, api, tables, tmp_path):
        conn_id, names = tables
        people = _people(40)
        api.state.clear()
        api.state.seed_numbers(people)
        SmsPartnerStopListToSqlOperator(task_id="extract", sql_conn_id=conn_id, table=names["stops"]).execute(
            context=CONTEXT
        )
        for entry in api.state.list_entries()[20:]:
            api.state.remove(entry.stop_id)
        out = tmp_path / "safe.parquet"
        with pytest.raises(
            StopListGuardError, match=f"run log {names['stops_runs']} of table {names['stops']}"
        ):
            _gate(
                phone_numbers=people,
                output_path=str(out),
                stop_list_table=names["stops"],
                stop_list_conn_id=conn_id,
            ).execute(context=CONTEXT)
        assert not out.exists()


# ------------------------------------------------------------------------------------ odd list rows
#: Stored numbers with a character nobody sees, one per person: 7 of 7 were kept before.
ODD_NUMBERS = {
    "NUL": "+3362\x000000001",
    "SOH": "+33620000\x01002",
    "DEL": "+3362000\x7f0003",
    "NEL": "+33620000004\x85",
    "LRM": "\u200e+33620000005",
    "BOM": "\ufeff+33620000006",
    "NNBSP": "06\u202f20\u202f00\u202f00\u202f07",
}


def _clean(number: str) -> str:
    digits = "".join(ch for ch in number if ch.isdigit())
    return "+33" + digits[1:] if digits.startswith("0") else "+" + digits


class TestOddListRows:
    def test_every_odd_row_is_matched(self, monkeypatch, api, tmp_path):
        serve_list_rows(monkeypatch, api, _list_rows(list(ODD_NUMBERS.values())))
        people = [_clean(number) for number in ODD_NUMBERS.values()]
        assert len(set(people)) == 7
        summary = _gate(
            phone_numbers=[*people, "+33699999999"], output_path=str(tmp_path / "safe.csv")
        ).execute(context=CONTEXT)
        assert (summary["stopped"], summary["kept"]) == (7, 1)
        assert (summary["rows_in_list"], summary["matched"], summary["unreadable"]) == (7, 7, 0)
        assert pd.read_csv(tmp_path / "safe.csv", dtype=str)["phone_e164"].tolist() == ["+33699999999"]

    def test_an_unreadable_row_fails_the_gate_by_default(self, monkeypatch, api, sqlite_conn, tmp_path):
        serve_list_rows(monkeypatch, api, [(1, "+33612345678", CREATED), (42, "33 6x 12", CREATED)])
        out = tmp_path / "safe.csv"
        with pytest.raises(
            StopListGuardError, match=r"1 of its 2 stops .*stop ids 42.*on_unreadable_list_row='warn'"
        ):
            _gate(
                phone_numbers=["+33699999999"],
                output_path=str(out),
                audit_table="audit",
                audit_conn_id=sqlite_conn,
            ).execute(context=CONTEXT)
        assert not out.exists()
        (row,) = read_results(sqlite_conn, "audit").to_dict("records")
        assert (row["status"], int(row["matched"]), int(row["unreadable"])) == ("refused", 1, 1)

    def test_warn_matches_an_unreadable_row_on_its_digits(self, monkeypatch, api, tmp_path, capsys):
        # Not a number for libphonenumber, and not a plain E.164 string: unreadable.
        serve_list_rows(monkeypatch, api, [(1, "+33612345678", CREATED), (42, "+33699999999#", CREATED)])
        summary = _gate(
            phone_numbers=["+33699999999", "+33611111111"],
            output_path=str(tmp_path / "safe.csv"),
            on_unreadable_list_row="warn",
        ).execute(context=CONTEXT)
        assert (summary["stopped"], summary["kept"], summary["unreadable"]) == (1, 1, 1)
        logged = capsys.readouterr()
        assert "are matched on their digits (stop ids 42)" in logged.out + logged.err


# ------------------------------------------------------------------------------------ shared targets
def _no_call(api: Any) -> None:
    assert api.stats.count() == 0, "the API was called before the clash was refused"


class TestSharedTargets:
    """output_path == excluded_path put every stopped number in the safe file (10,000 of 10,000)."""

    @pytest.mark.parametrize(
        ("output", "excluded"),
        [("safe.csv", "safe.csv"), ("safe.csv", "file://{dir}/safe.csv"), ("safe.csv", "./sub/../safe.csv")],
        ids=["same-text", "path-and-file-uri", "same-after-resolving"],
    )
    def test_one_file_for_two_outputs(self, api, tmp_path, monkeypatch, output, excluded):
        monkeypatch.chdir(tmp_path)
        (tmp_path / "sub").mkdir()
        api.stats.reset()
        with pytest.raises(ValueError, match=r"output_path .* and excluded_path .* are the same file"):
            _gate(
                phone_numbers=_people(3), output_path=output, excluded_path=excluded.format(dir=tmp_path)
            ).execute(context=CONTEXT)
        _no_call(api)

    def test_output_over_its_source_is_refused_and_the_source_survives(self, api, tmp_path):
        source = tmp_path / "audience.csv"
        source.write_text("phone\n+33611111111\n")
        with pytest.raises(ValueError, match=r"output_path .* and source_path .* are the same file"):
            _gate(source_path=str(source), output_path=source.as_uri()).execute(context=CONTEXT)
        assert source.read_text() == "phone\n+33611111111\n"

    @pytest.mark.parametrize(
        "clash",
        ["excluded_table", "audit_table", "stop_list_table", "sql"],
    )
    def test_one_table_for_two_roles(self, api, tables, clash):
        conn_id, names = tables
        target = names["kept"]
        kwargs: dict[str, Any] = {
            "phone_numbers": _people(3),
            "output_table": target,
            "output_conn_id": conn_id,
        }
        if clash == "sql":
            kwargs = {"sql": f"SELECT phone FROM {target}", "sql_conn_id": conn_id, "output_table": target}
        elif clash == "stop_list_table":
            kwargs |= {"stop_list_table": target}
        else:
            kwargs |= {clash: target}
        api.stats.reset()
        with pytest.raises(ValueError, match=f"output_table '{target}.*' and {clash} .* are the same table"):
            _gate(**kwargs).execute(context=CONTEXT)
        _no_call(api)

    def test_schema_qualified_and_plain_names_of_one_table_clash(self, api, postgres_conn):
        with pytest.raises(ValueError, match="are the same table"):
            _gate(
                phone_numbers=_people(1),
                output_table="public.gate_same",
                excluded_table="gate_same",
                output_conn_id=postgres_conn,
            ).execute(context=CONTEXT)

    def test_two_connections_to_one_sqlite_file_clash(self, api, monkeypatch, sqlite_conn, tmp_path):
        import json

        monkeypatch.setenv(
            "AIRFLOW_CONN_SAME_FILE",
            json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "warehouse.db")}),
        )
        with pytest.raises(ValueError, match=r"output_table .* and audit_table .* are the same table"):
            _gate(
                phone_numbers=_people(1),
                output_table="Kept",
                output_conn_id=sqlite_conn,
                audit_table="kept",
                audit_conn_id="same_file",
            ).execute(context=CONTEXT)


def test_distinct_targets_still_run(api, tables, tmp_path):
    conn_id, names = tables
    summary = _gate(
        phone_numbers=_people(3),
        output_table=names["kept"],
        output_conn_id=conn_id,
        audit_table=names["audit"],
        excluded_path=str(Path(tmp_path) / "excluded.csv"),
    ).execute(context=CONTEXT)
    assert summary["audience"] == 3


# ------------------------------------------------------------------------------------ killed runs
@pytest.mark.slow  # a child interpreter
class TestKilledWhileWriting:
    """A kill left a truncated, well-formed safe file in place of the previous one (2 of 3 kills)."""

    @staticmethod
    def _start(tmp_path: Path, args: dict[str, Any]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.operators.gate_child", json.dumps(args)],
            cwd=PROJECT_ROOT,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    @staticmethod
    def _kill_after(process: subprocess.Popen[str], chunks: int) -> None:
        assert process.stdout is not None
        seen = 0
        for line in process.stdout:
            if line.startswith("@@chunk"):
                seen += 1
                if seen == chunks:
                    process.send_signal(signal.SIGKILL)
                    break
        process.wait(timeout=60)
        assert seen == chunks, f"the run ended after {seen} chunks, before the kill"

    def test_sigkill_at_random_chunks_leaves_the_previous_files(self, api, tmp_path):
        rng = random.Random(19)
        source = tmp_path / "audience.parquet"
        people = [f"+3367{i:07d}" for i in range(6_000)]
        pd.DataFrame({"id": range(len(people)), "phone": people}).to_parquet(source)
        output, excluded = tmp_path / "out" / "safe.csv", tmp_path / "out" / "excluded.csv"
        output.parent.mkdir()
        output.write_text("phone,phone_e164\nprevious,+33600000000\n")
        excluded.write_text("phone,phone_e164,reason\nprevious,+33600000001,stopped\n")
        before = (output.read_bytes(), excluded.read_bytes())
        args = {
            "source_path": str(source),
            "output_path": str(output),
            "excluded_path": str(excluded),
            "chunk_size": 200,  # 30 chunks to each file
        }
        kills = sorted(rng.sample(range(1, 60), 6))
        for chunks in kills:
            self._kill_after(self._start(tmp_path, args), chunks)
            assert (output.read_bytes(), excluded.read_bytes()) == before, f"killed after {chunks} chunks"
        assert any(p.name.endswith(".smspartner-tmp") for p in output.parent.iterdir())  # left by the kills

        finished = self._start(tmp_path, args)
        out, _ = finished.communicate(timeout=120)
        assert finished.returncode == 0, out[-2000:]
        assert sorted(p.name for p in output.parent.iterdir()) == ["excluded.csv", "safe.csv"]
        assert len(pd.read_csv(output)) == len(people) - len(set(people) & api.state.phone_numbers())

    def test_a_killed_first_run_leaves_no_file(self, api, tmp_path):
        source = tmp_path / "audience.csv"
        source.write_text("phone\n" + "\n".join(f"+3367{i:07d}" for i in range(2_000)) + "\n")
        output = tmp_path / "safe.csv"
        args = {
            "source_path": str(source),
            "output_path": str(output),
            "excluded_path": None,
            "chunk_size": 100,
        }
        self._kill_after(self._start(tmp_path, args), 7)
        assert not output.exists()


@pytest.mark.parametrize(
    ("warehouse", "column", "rule"),
    [("postgres", "c" * 64, "limit of 63"), ("postgres", "rate_%", "%"), ("mysql", "a`b", "backtick")],
    ids=["postgres-64-bytes", "postgres-percent", "mariadb-backtick"],
)
def test_unstorable_audience_columns_fail_before_any_call(request, api, warehouse, column, rule):
    conn_id = request.getfixturevalue(f"{warehouse}_conn")
    table = f"gate_cols_{uuid.uuid4().hex[:8]}"
    audience = pd.DataFrame({"phone": ["+33611111111"], column: ["x"]})
    api.stats.reset()
    try:
        with pytest.raises(ValueError, match=re.escape(rule)):
            _gate(
                phone_numbers=audience, phone_column="phone", output_table=table, output_conn_id=conn_id
            ).execute(context=CONTEXT)
        _no_call(api)
    finally:
        drop_table(conn_id, table)
