"""SmsPartnerStopListToSqlOperator against the sandbox and real SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_smspartner.exceptions import (
    DuplicateStopIdError,
    SmsPartnerAuthError,
    SmsPartnerError,
    SmsPartnerResponseError,
    StopListGuardError,
)
from airflow_provider_smspartner.phone_numbers import stop_list_e164
from airflow_provider_smspartner.sql.apply import RemovalCounts
from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.sql.tables import (
    run_log_table_name,
    run_log_table_spec,
    stop_list_table_spec,
)
from airflow_provider_smspartner.sql.writer import SqlTableWriter
from airflow_provider_smspartner.transfers.smspartner_to_sql import (
    SmsPartnerStopListToSqlOperator,
    check_removals,
    stop_list_as_of_sql,
    task_identity,
)
from tests.conftest import PROJECT_ROOT, smspartner_connection_json
from tests.helpers import live_sha256, serve_list_rows


def _operator(conn_id: str, table: str, mode: str = "replace", **kwargs) -> SmsPartnerStopListToSqlOperator:
    return SmsPartnerStopListToSqlOperator(
        task_id="extract",
        sql_conn_id=conn_id,
        table=table,
        mode=mode,
        chunk_size=kwargs.pop("chunk_size", 3),
        **kwargs,
    )


def _table(conn_id: str, table: str) -> pd.DataFrame:
    frame = SqlTableWriter(resolve_dbapi_hook(conn_id), table, stop_list_table_spec()).read_frame()
    frame.columns = [c.lower() for c in frame.columns]
    for column in ("created_at", "first_seen_at", "extracted_at", "removed_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True, format="mixed")
    return frame.sort_values("stop_id").reset_index(drop=True)


def _update_row(conn_id: str, table: str, stop_id: int, **values: object) -> None:
    """Change one row behind the operator's back (as another writer of the table would)."""
    writer = SqlTableWriter(resolve_dbapi_hook(conn_id), table, stop_list_table_spec())
    stops = writer.sql_table
    with writer.engine.begin() as conn:
        conn.execute(sa.update(stops).where(stops.c.stop_id == stop_id).values(**values))


def _tables_like(conn_id: str, prefix: str) -> list[str]:
    hook = resolve_dbapi_hook(conn_id)
    queries = {
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
        "postgres": "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        "mysql": "SELECT table_name FROM information_schema.tables WHERE table_schema = 'test'",
    }
    return [row[0] for row in hook.get_records(queries[hook.conn_type]) if row[0].startswith(prefix)]


@pytest.fixture
def drop_after(warehouse_conn: str, unique_table: str) -> Iterator[None]:
    yield
    hook = resolve_dbapi_hook(warehouse_conn)
    for name in _tables_like(warehouse_conn, unique_table):
        hook.run(f"DROP TABLE {name}")


def _current_list(sandbox) -> set[tuple[int, str]]:
    return {(stop_id, phone) for stop_id, phone, _ in sandbox.state.list_entries()}


def _stop_rows(conn_id: str, table: str) -> list[tuple]:
    """``(stop_id, phone_number, phone_e164, created_at)`` per row, missing values as None."""
    frame = _table(conn_id, table)
    return [
        (int(r.stop_id), r.phone_number, None if pd.isna(r.phone_e164) else r.phone_e164, r.created_at)
        for r in frame.itertuples(index=False)
    ]


def _staging_tables(conn_id: str, table: str) -> list[str]:
    return [name for name in _tables_like(conn_id, table) if name not in (table, f"{table}_runs")]


def _spawn(
    tmp_path: Path, name: str, conn_id: str, table: str, mode: str, *flags: str
) -> tuple[subprocess.Popen, Path]:
    """Start ``extract_child`` (the operator in a process of its own); return it and its events file."""
    events = tmp_path / f"{name}.jsonl"
    with (tmp_path / f"{name}.out").open("w") as out:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.transfers.extract_child",
                conn_id,
                table,
                mode,
                str(events),
                *flags,
            ],
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return child, events


def _events(path: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            found.setdefault(record["event"], []).append(record)
    return found


def _wait_for(child: subprocess.Popen, events: Path, event: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while event not in _events(events):
        if child.poll() is not None:
            output = events.with_suffix(".out").read_text()[-3000:]
            pytest.fail(f"child exited ({child.returncode}) before {event!r}:\n{output}")
        if time.monotonic() > deadline:
            pytest.fail(f"child did not reach {event!r} in {timeout} s")
        time.sleep(0.05)


@pytest.mark.usefixtures("smspartner_conn", "drop_after")
class TestModes:
    def test_replace_holds_exactly_the_current_list(self, sandbox, warehouse_conn, unique_table):
        first = _operator(warehouse_conn, unique_table).execute({})
        assert first == {
            "rows_in_list": 5,
            "inserted": 5,
            "updated": 0,
            "removed": 0,
            "list_sha256": live_sha256(sandbox),
            "table": unique_table,
            "mode": "replace",
        }
        entries = sandbox.state.list_entries()
        sandbox.state.remove(entries[0][0])
        sandbox.state.remove(entries[1][0])
        sandbox.state.add("+33655500011")
        # 2 of 5 stops leave the list: more than the guard's default share (see TestGuard).
        second = _operator(warehouse_conn, unique_table, max_removed_fraction=0.5).execute({})
        assert (second["inserted"], second["removed"], second["rows_in_list"]) == (1, 2, 4)
        table = _table(warehouse_conn, unique_table)
        assert set(zip(table["stop_id"], table["phone_number"], strict=True)) == _current_list(sandbox)
        assert table["removed_at"].isna().all()
        assert set(table["phone_e164"]) == {phone for _, phone in _current_list(sandbox)}

    def test_timestamps_are_utc(self, sandbox, warehouse_conn, unique_table):
        _operator(warehouse_conn, unique_table).execute({})
        table = _table(warehouse_conn, unique_table)
        expected = {stop_id: created for stop_id, _, created in sandbox.state.list_entries()}
        for stop_id, created in zip(table["stop_id"], table["created_at"], strict=True):
            assert created.to_pydatetime() == expected[stop_id]
        assert table["extracted_at"].notna().all()

    def test_upsert_keeps_history(self, sandbox, warehouse_conn, unique_table):
        _operator(warehouse_conn, unique_table, "upsert").execute({})
        entries = sandbox.state.list_entries()
        gone = entries[0][0]
        sandbox.state.remove(gone)
        sandbox.state.add("+33655500022")
        summary = _operator(warehouse_conn, unique_table, "upsert").execute({})
        assert (summary["inserted"], summary["updated"], summary["removed"]) == (1, 0, 1)
        table = _table(warehouse_conn, unique_table).set_index("stop_id")
        assert len(table) == 6
        assert table.loc[gone, "removed_at"] is not pd.NaT and pd.notna(table.loc[gone, "removed_at"])
        assert table["removed_at"].notna().sum() == 1

        # Unchanged on a re-run: nothing inserted, updated or removed again.
        again = _operator(warehouse_conn, unique_table, "upsert").execute({})
        assert (again["inserted"], again["updated"], again["removed"]) == (0, 0, 0)

    def test_upsert_clears_removed_at_when_stop_id_reappears(self, sandbox, warehouse_conn, unique_table):
        _operator(warehouse_conn, unique_table, "upsert").execute({})
        stop_id = sandbox.state.list_entries()[2][0]
        _update_row(
            warehouse_conn, unique_table, stop_id, removed_at=datetime(2020, 1, 1, tzinfo=timezone.utc)
        )
        summary = _operator(warehouse_conn, unique_table, "upsert").execute({})
        assert (summary["inserted"], summary["updated"], summary["removed"]) == (0, 1, 0)
        assert _table(warehouse_conn, unique_table)["removed_at"].isna().all()

    def test_upsert_updates_changed_rows(self, sandbox, warehouse_conn, unique_table):
        _operator(warehouse_conn, unique_table, "upsert").execute({})
        stop_id = sandbox.state.list_entries()[0][0]
        _update_row(warehouse_conn, unique_table, stop_id, phone_number="stale")
        summary = _operator(warehouse_conn, unique_table, "upsert").execute({})
        assert summary["updated"] == 1
        table = _table(warehouse_conn, unique_table).set_index("stop_id")
        assert table.loc[stop_id, "phone_number"] != "stale"

    def test_append_inserts_only_new_stop_ids(self, sandbox, warehouse_conn, unique_table):
        _operator(warehouse_conn, unique_table, "append").execute({})
        gone = sandbox.state.list_entries()[0][0]
        sandbox.state.remove(gone)
        sandbox.state.add("+33655500033")
        summary = _operator(warehouse_conn, unique_table, "append").execute({})
        assert (summary["inserted"], summary["updated"], summary["removed"]) == (1, 0, 0)
        table = _table(warehouse_conn, unique_table)
        assert len(table) == 6 and gone in set(table["stop_id"])

    def test_empty_list(self, sandbox, warehouse_conn, unique_table):
        _operator(warehouse_conn, unique_table).execute({})
        sandbox.state.clear()
        # Refused unless allowed (see TestGuard).
        summary = _operator(warehouse_conn, unique_table, allow_empty_list=True).execute({})
        assert (summary["rows_in_list"], summary["removed"]) == (0, 5)
        assert _table(warehouse_conn, unique_table).empty


@pytest.mark.usefixtures("drop_after")
class TestAtomicity:
    @pytest.fixture
    def loaded(self, monkeypatch, sandbox, warehouse_conn, unique_table) -> pd.DataFrame:
        monkeypatch.setenv("AIRFLOW_CONN_SMSPARTNER_DEFAULT", smspartner_connection_json(sandbox.base_url))
        _operator(warehouse_conn, unique_table).execute({})
        sandbox.state.add("+33655500044")
        return _table(warehouse_conn, unique_table)

    def test_truncated_list_leaves_table_intact(self, loaded, sandbox, warehouse_conn, unique_table):
        sandbox.inject("truncated_list", count=10, endpoint="stop-sms/list")
        with pytest.raises(SmsPartnerResponseError, match="incomplete list"):
            _operator(warehouse_conn, unique_table).execute({})
        pd.testing.assert_frame_equal(_table(warehouse_conn, unique_table), loaded)

    def test_api_error_leaves_table_intact(self, loaded, sandbox, warehouse_conn, unique_table):
        sandbox.api_key = "rotated-key"
        with pytest.raises(SmsPartnerAuthError):
            _operator(warehouse_conn, unique_table).execute({})
        pd.testing.assert_frame_equal(_table(warehouse_conn, unique_table), loaded)

    @pytest.mark.parametrize("mode", ["replace", "upsert"])
    def test_database_error_mid_load_leaves_table_intact(
        self, loaded, monkeypatch, warehouse_conn, unique_table, mode
    ):
        real_chunks = SqlTableWriter._chunks

        def failing_chunks(self, frame):
            for number, chunk in enumerate(real_chunks(self, frame)):
                if number == 1:
                    raise RuntimeError("simulated database failure mid-load")
                yield chunk

        monkeypatch.setattr(SqlTableWriter, "_chunks", failing_chunks)
        with pytest.raises(RuntimeError, match="mid-load"):
            _operator(warehouse_conn, unique_table, mode, chunk_size=2).execute({})
        pd.testing.assert_frame_equal(_table(warehouse_conn, unique_table), loaded)
        assert _staging_tables(warehouse_conn, unique_table) == []  # staging dropped


class TestValidation:
    @pytest.mark.parametrize(
        "table",
        ["stops; DROP TABLE users", 'st"ops', "a.b.c", "1stops", "stops--", "", "sch.ema.t", "x" * 64],
        ids=["statement", "quote", "three-parts", "leading-digit", "comment", "empty", "dots", "too-long"],
    )
    def test_hostile_table_name_is_refused_before_any_call(
        self, smspartner_conn, sandbox, sqlite_conn, table
    ):
        with pytest.raises(ValueError, match=r"(?i)table name"):
            _operator(sqlite_conn, table).execute({})
        assert sandbox.stats.total == 0

    def test_non_sql_connection_is_refused(self, smspartner_conn, sandbox):
        with pytest.raises(ValueError, match="not a SQL database hook"):
            _operator("smspartner_default", "stops").execute({})
        assert sandbox.stats.total == 0

    def test_unknown_mode(self, smspartner_conn, sqlite_conn):
        with pytest.raises(ValueError, match="mode must be one of replace, upsert, append"):
            _operator(sqlite_conn, "stops", "merge").execute({})

    def test_existing_table_with_other_columns_is_refused(self, smspartner_conn, sqlite_conn):
        resolve_dbapi_hook(sqlite_conn).run("CREATE TABLE stops (id INTEGER)")
        with pytest.raises(ValueError, match=r"lacks column\(s\) \['stop_id'"):
            _operator(sqlite_conn, "stops").execute({})

    @pytest.mark.parametrize("value", [-0.1, 1.5, "0.2", True, float("nan")], ids=repr)
    def test_max_removed_fraction_is_a_share(self, value):
        with pytest.raises(ValueError, match=r"^max_removed_fraction must be a number from 0 to 1 or None"):
            _operator("any", "stops", max_removed_fraction=value)

    def test_allow_empty_list_is_a_bool(self):
        with pytest.raises(ValueError, match=r"^allow_empty_list must be True or False; got 'yes'"):
            _operator("any", "stops", allow_empty_list="yes")

    def test_templated_fields(self):
        assert set(SmsPartnerStopListToSqlOperator.template_fields) >= {"sql_conn_id", "table", "mode"}


@pytest.mark.usefixtures("smspartner_conn")
class TestSchemas:
    def test_postgres_schema_qualified_table_and_types(self, postgres_conn, unique_table):
        hook = resolve_dbapi_hook(postgres_conn)
        try:
            _operator(postgres_conn, f"public.{unique_table}").execute({})
            types = dict(
                hook.get_records(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                    parameters=(unique_table,),
                )
            )
            assert types["created_at"] == "timestamp with time zone"
            assert types["stop_id"] == "bigint"
            indexes = [
                r[0]
                for r in hook.get_records(
                    "SELECT indexname FROM pg_indexes WHERE tablename = %s", parameters=(unique_table,)
                )
            ]
            assert any("phone_e164" in name for name in indexes)
        finally:
            hook.run(f"DROP TABLE IF EXISTS public.{unique_table}, public.{unique_table}_runs")

    def test_sqlite_stores_iso_text(self, sqlite_conn):
        _operator(sqlite_conn, "stops").execute({})
        value = resolve_dbapi_hook(sqlite_conn).get_first("SELECT created_at FROM stops")[0]
        assert isinstance(value, str) and value.endswith("Z") and "T" in value


class TestCheckRemovals:
    """The guard's rule, without a database: shares of the stops on the list (removed_at IS NULL)."""

    @pytest.mark.parametrize(
        ("counts", "settings", "refused"),
        [
            (RemovalCounts(live=10, removed=2, incoming=8), {}, None),
            (RemovalCounts(live=10, removed=3, incoming=7), {}, "would remove 3 of the 10 stops"),
            (RemovalCounts(live=10, removed=3, incoming=7), {"max_removed_fraction": 0.3}, None),
            (RemovalCounts(live=100, removed=57, incoming=43), {"max_removed_fraction": 0.57}, None),
            (
                RemovalCounts(live=10, removed=1, incoming=9),
                {"max_removed_fraction": 0.0},
                "fraction=0 allows",
            ),
            (RemovalCounts(live=10, removed=10, incoming=5), {"max_removed_fraction": None}, None),
            (RemovalCounts(live=10, removed=10, incoming=0), {}, "empty stop list"),
            (
                RemovalCounts(live=10, removed=10, incoming=0),
                {"max_removed_fraction": None},
                "empty stop list",
            ),
            (RemovalCounts(live=10, removed=10, incoming=0), {"allow_empty_list": True}, None),
            (RemovalCounts(live=0, removed=0, incoming=0), {}, None),
            (RemovalCounts(live=0, removed=0, incoming=5), {"max_removed_fraction": 0.0}, None),
        ],
        ids=[
            "at-the-share",
            "over-the-share",
            "raised-share",
            "share-as-written",
            "zero-share",
            "check-disabled",
            "empty",
            "empty-needs-its-own-flag",
            "empty-allowed",
            "empty-table-empty-list",
            "first-load",
        ],
    )
    def test_rule(self, counts, settings, refused):
        arguments = {"table": "stops", "max_removed_fraction": 0.2, "allow_empty_list": False, **settings}
        if refused is None:
            check_removals(counts, **arguments)
        else:
            with pytest.raises(StopListGuardError, match=refused):
                check_removals(counts, **arguments)

    def test_error_is_a_provider_error(self):
        assert issubclass(StopListGuardError, SmsPartnerError)


@pytest.mark.usefixtures("smspartner_conn", "drop_after")
class TestGuard:
    """replace and upsert refuse, writing nothing, a list that empties the table or removes too much."""

    @pytest.fixture(params=["replace", "upsert"])
    def mode(self, request: pytest.FixtureRequest) -> str:
        return request.param

    @pytest.fixture
    def loaded(self, warehouse_conn, unique_table, mode) -> pd.DataFrame:
        _operator(warehouse_conn, unique_table, mode).execute({})
        return _table(warehouse_conn, unique_table)

    def test_too_many_removed_is_refused(self, loaded, sandbox, warehouse_conn, unique_table, mode):
        for stop_id, _, _ in sandbox.state.list_entries()[:2]:
            sandbox.state.remove(stop_id)
        sandbox.state.add("+33655500055")
        with pytest.raises(
            StopListGuardError,
            match=r"would remove 2 of the 5 stops on the list \(40\.0%; the new list has 4\), "
            r"more than max_removed_fraction=0\.2 allows; nothing was written",
        ):
            _operator(warehouse_conn, unique_table, mode).execute({})
        pd.testing.assert_frame_equal(_table(warehouse_conn, unique_table), loaded)
        assert _staging_tables(warehouse_conn, unique_table) == []

    def test_empty_list_is_refused(self, loaded, sandbox, warehouse_conn, unique_table, mode):
        sandbox.state.clear()
        with pytest.raises(
            StopListGuardError,
            match=r"Refusing an empty stop list for table stops_\w+: it holds 5 stop\(s\) on the list "
            r".*run with allow_empty_list=True",
        ):
            _operator(warehouse_conn, unique_table, mode).execute({})
        pd.testing.assert_frame_equal(_table(warehouse_conn, unique_table), loaded)
        assert _staging_tables(warehouse_conn, unique_table) == []

    def test_removing_up_to_the_share_is_applied(self, loaded, sandbox, warehouse_conn, unique_table, mode):
        sandbox.state.remove(sandbox.state.list_entries()[0][0])
        assert _operator(warehouse_conn, unique_table, mode).execute({})["removed"] == 1

    def test_none_disables_the_share_check(self, loaded, sandbox, warehouse_conn, unique_table, mode):
        for stop_id, _, _ in sandbox.state.list_entries()[:4]:
            sandbox.state.remove(stop_id)
        summary = _operator(warehouse_conn, unique_table, mode, max_removed_fraction=None).execute({})
        assert summary["removed"] == 4
        on_list = _table(warehouse_conn, unique_table).query("removed_at.isna()")
        assert set(zip(on_list["stop_id"], on_list["phone_number"], strict=True)) == _current_list(sandbox)

    def test_allow_empty_list_applies_it(self, loaded, sandbox, warehouse_conn, unique_table, mode):
        sandbox.state.clear()
        summary = _operator(warehouse_conn, unique_table, mode, allow_empty_list=True).execute({})
        assert (summary["rows_in_list"], summary["removed"]) == (0, 5)
        table = _table(warehouse_conn, unique_table)
        assert table.empty if mode == "replace" else table["removed_at"].notna().all()

    def test_only_stops_on_the_list_count(self, loaded, sandbox, warehouse_conn, unique_table, mode):
        entries = sandbox.state.list_entries()
        for stop_id, _, _ in entries[:3]:  # in the table but marked as having left the list
            _update_row(
                warehouse_conn, unique_table, stop_id, removed_at=datetime(2020, 1, 1, tzinfo=timezone.utc)
            )
        before = _table(warehouse_conn, unique_table)
        sandbox.state.remove(entries[4][0])  # 1 of the 5 rows, but 1 of the 2 on the list
        with pytest.raises(StopListGuardError, match=r"would remove 1 of the 2 stops on the list \(50\.0%"):
            _operator(warehouse_conn, unique_table, mode).execute({})
        pd.testing.assert_frame_equal(_table(warehouse_conn, unique_table), before)

    def test_append_is_not_guarded(self, sandbox, warehouse_conn, unique_table):
        _operator(warehouse_conn, unique_table, "append").execute({})
        before = _table(warehouse_conn, unique_table)
        sandbox.state.clear()
        assert _operator(warehouse_conn, unique_table, "append").execute({})["inserted"] == 0
        pd.testing.assert_frame_equal(_table(warehouse_conn, unique_table), before)


CREATED = "2024-01-15 10:00:00"  # Europe/Paris, the API's zone
CREATED_UTC = pd.Timestamp("2024-01-15 09:00:00", tz="UTC")
LONG_NUMBER = "+33" + "6" * 70_000  # more than MySQL's TEXT (64 KiB) holds
ODD_NUMBER = "+33 6 12 34 56 81 \u260e\U0001f600"  # 4-byte UTF-8: needs utf8mb4 on MySQL/MariaDB


def _e164(number: str) -> str | None:
    """What the hook's normaliser makes of ``number`` (the extract stores that, as for any number)."""
    value = stop_list_e164(pd.Series([number]))[0]
    return None if pd.isna(value) else value


@pytest.mark.usefixtures("smspartner_conn", "drop_after")
class TestPoisonRows:
    """A row the warehouse could not take never blocks the list; every database ends the same."""

    @pytest.mark.parametrize(
        ("rows", "expected"),
        [
            ([(7, LONG_NUMBER, CREATED)], [(7, LONG_NUMBER, None, CREATED_UTC)]),
            (
                [(7, "+3361234\x005678", CREATED)],
                [(7, "+33612345678", "+33612345678", CREATED_UTC)],
            ),
            (
                [(7, "\t+33 6 12 34 56 79\r\n", CREATED), (8, "+33612345680\x7f\x85\x1b", CREATED)],
                [
                    (7, "+33 6 12 34 56 79", "+33612345679", CREATED_UTC),
                    (8, "+33612345680", "+33612345680", CREATED_UTC),
                ],
            ),
            ([(7, ODD_NUMBER, CREATED)], [(7, ODD_NUMBER, _e164(ODD_NUMBER), CREATED_UTC)]),
            (
                [(7, "+33612345682", CREATED), (7, "+33612345682", "2024-01-10 10:00:00")],
                [(7, "+33612345682", "+33612345682", pd.Timestamp("2024-01-10 09:00:00", tz="UTC"))],
            ),
            (
                [(7, "+33612345683\x00", CREATED), (7, "+33612345683", CREATED)],
                [(7, "+33612345683", "+33612345683", CREATED_UTC)],
            ),
        ],
        ids=[
            "long-number",
            "nul",
            "control-characters",
            "non-ascii",
            "same-stop-twice",
            "same-after-cleaning",
        ],
    )
    def test_odd_rows_land(self, monkeypatch, sandbox, warehouse_conn, unique_table, rows, expected):
        normal = (1, "+33612345601", CREATED)
        serve_list_rows(monkeypatch, sandbox, [normal, *rows])
        expected = [(1, "+33612345601", "+33612345601", CREATED_UTC), *expected]
        summary = _operator(warehouse_conn, unique_table).execute({})
        assert summary["rows_in_list"] == 1 + len(rows)  # the API's nbData: rows as sent
        assert _stop_rows(warehouse_conn, unique_table) == expected
        # The database holds what was written: the next run finds nothing to change.
        again = _operator(warehouse_conn, unique_table, "upsert").execute({})
        assert (again["inserted"], again["updated"], again["removed"]) == (0, 0, 0)

    def test_stop_id_listed_with_two_numbers_is_refused(
        self, monkeypatch, sandbox, warehouse_conn, unique_table
    ):
        _operator(warehouse_conn, unique_table).execute({})
        before = _table(warehouse_conn, unique_table)
        listed = [(i, phone, CREATED) for i, phone, _ in sandbox.state.list_entries()]
        serve_list_rows(
            monkeypatch, sandbox, [*listed, (90, "+33612345690", CREATED), (90, "+33612345691", CREATED)]
        )
        with pytest.raises(
            DuplicateStopIdError, match=r"1 stop id\(s\) more than once with different numbers: 90\. "
        ):
            _operator(warehouse_conn, unique_table, "upsert").execute({})
        pd.testing.assert_frame_equal(_table(warehouse_conn, unique_table), before)
        assert issubclass(DuplicateStopIdError, SmsPartnerResponseError)


@pytest.mark.slow  # a child interpreter
@pytest.mark.usefixtures("smspartner_conn", "drop_after")
class TestStagingLeftovers:
    def test_killed_upsert_leaves_at_most_one_staging_table_and_the_next_run_drops_it(
        self, sandbox, warehouse_conn, unique_table, tmp_path
    ):
        _operator(warehouse_conn, unique_table, "upsert").execute({})
        before = _table(warehouse_conn, unique_table)
        sandbox.state.seed_random(40, random.Random(3))
        child, events = _spawn(
            tmp_path, "killed", warehouse_conn, unique_table, "upsert", "--chunk-size", "5", "--stall"
        )
        try:
            _wait_for(child, events, "stalled")  # staging table created, first chunk sent
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        pd.testing.assert_frame_equal(_table(warehouse_conn, unique_table), before)
        # PostgreSQL and SQLite create it inside the killed transaction; MySQL commits DDL at once.
        leftover = [f"{unique_table}__stg_smspartner"] if warehouse_conn == "warehouse_mysql" else []
        assert _staging_tables(warehouse_conn, unique_table) == leftover

        summary = _operator(warehouse_conn, unique_table, "upsert").execute({})
        assert (summary["inserted"], summary["removed"]) == (40, 0)
        assert _staging_tables(warehouse_conn, unique_table) == []
        table = _table(warehouse_conn, unique_table)
        assert set(zip(table["stop_id"], table["phone_number"], strict=True)) == _current_list(sandbox)


@pytest.mark.slow  # a child interpreter
@pytest.mark.usefixtures("smspartner_conn", "drop_after")
class TestConcurrency:
    """The table's write lock, taken the same way in every keyed mode (``SqlTableWriter._locked``,
    one kind per database), so one mode per database: upsert, whose staging table (one fixed name
    per table, outside the transaction on MySQL) the lock guards too."""

    def test_two_extracts_at_once_apply_one_after_the_other(
        self, sandbox, warehouse_conn, unique_table, tmp_path
    ):
        sandbox.state.seed_random(1995, random.Random(5))
        go = tmp_path / "go"
        flags = ("--chunk-size", "100", "--chunk-delay", "0.03", "--go", str(go))
        children = [
            _spawn(tmp_path, f"child{i}", warehouse_conn, unique_table, "upsert", *flags) for i in (1, 2)
        ]
        try:
            for child, events in children:
                _wait_for(child, events, "ready")
            go.touch()
            for child, events in children:
                _wait_for(child, events, "done")
                assert child.wait(timeout=60) == 0
        finally:
            for child, _ in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        runs = [_events(events) for _, events in children]
        # One applied the whole list; the other waited for it, then found nothing to change.
        assert sorted(run["done"][0]["summary"]["inserted"] for run in runs) == [0, 2000]
        loads = sorted((run["load_start"][0]["time"], run["load_end"][0]["time"]) for run in runs)
        assert loads[0][1] <= loads[1][0], "the loads overlapped: no lock"
        assert max(run["start"][0]["time"] for run in runs) < loads[0][1], "the runs did not overlap"
        table = _table(warehouse_conn, unique_table)
        assert set(zip(table["stop_id"], table["phone_number"], strict=True)) == _current_list(sandbox)
        assert len(table) == 2000 and table["removed_at"].isna().all()
        assert _staging_tables(warehouse_conn, unique_table) == []


# ------------------------------------------------------------------------------ evidence
TI = SimpleNamespace(dag_id="stops_dag", run_id="scheduled__2026-01-02", task_id="extract", try_number=2)
OLD = datetime(2020, 1, 1, tzinfo=timezone.utc)


def _runs(conn_id: str, table: str) -> pd.DataFrame:
    """The run log of ``table``, oldest first, timestamps as UTC."""
    frame = SqlTableWriter(
        resolve_dbapi_hook(conn_id), run_log_table_name(table), run_log_table_spec()
    ).read_frame()
    frame.columns = [c.lower() for c in frame.columns]
    for column in ("started_at", "finished_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True, format="mixed")
    return frame.sort_values("started_at").reset_index(drop=True)


def _value(value: object) -> object:
    return None if pd.isna(value) else value


@pytest.mark.usefixtures("smspartner_conn", "drop_after")
class TestRunLog:
    """One row per run, in the change's transaction; a refused list leaves one on its own."""

    def test_applied_runs(self, sandbox, warehouse_conn, unique_table):
        before = datetime.now(timezone.utc).replace(microsecond=0)
        _operator(warehouse_conn, unique_table, "upsert").execute({"ti": TI})
        sandbox.state.remove(sandbox.state.list_entries()[0][0])
        sandbox.state.add("+33655500066")
        _operator(warehouse_conn, unique_table, "upsert").execute({"ti": TI})
        runs = _runs(warehouse_conn, unique_table)
        assert len(runs) == 2
        first, second = runs.to_dict("records")
        assert {k: first[k] for k in ("dag_id", "run_id", "task_id", "try_number", "mode", "status")} == {
            "dag_id": "stops_dag",
            "run_id": "scheduled__2026-01-02",
            "task_id": "extract",
            "try_number": 2,
            "mode": "upsert",
            "status": "applied",
        }
        counts = ("rows_in_list", "inserted", "updated", "removed")
        assert [first[k] for k in counts] == [5, 5, 0, 0]
        assert [second[k] for k in counts] == [5, 1, 0, 1]
        assert second["list_sha256"] == live_sha256(sandbox) != first["list_sha256"]
        assert _value(second["reason"]) is None
        assert before <= first["started_at"] <= first["finished_at"] <= second["started_at"]

    def test_minimal_context(self, warehouse_conn, unique_table):
        _operator(warehouse_conn, unique_table).execute({})
        row = _runs(warehouse_conn, unique_table).iloc[0]
        assert (row["task_id"], _value(row["dag_id"]), _value(row["run_id"]), _value(row["try_number"])) == (
            "extract",
            None,
            None,
            None,
        )

    @pytest.mark.parametrize("mode", ["replace", "upsert"])
    def test_refused_list_leaves_a_row_and_no_change(self, sandbox, warehouse_conn, unique_table, mode):
        _operator(warehouse_conn, unique_table, mode).execute({"ti": TI})
        before = _table(warehouse_conn, unique_table)
        for stop_id, _, _ in sandbox.state.list_entries()[:2]:
            sandbox.state.remove(stop_id)
        with pytest.raises(StopListGuardError):
            _operator(warehouse_conn, unique_table, mode).execute({"ti": TI})
        pd.testing.assert_frame_equal(_table(warehouse_conn, unique_table), before)
        runs = _runs(warehouse_conn, unique_table)
        assert runs["status"].tolist() == ["applied", "refused"]
        refused = runs.iloc[1]
        assert "would remove 2 of the 5 stops" in refused["reason"]
        assert (refused["rows_in_list"], refused["list_sha256"]) == (3, live_sha256(sandbox))
        assert all(_value(refused[k]) is None for k in ("inserted", "updated", "removed"))

    def test_refused_answer_leaves_a_row(self, sandbox, warehouse_conn, unique_table):
        sandbox.inject("truncated_list", count=10, endpoint="stop-sms/list")
        with pytest.raises(SmsPartnerResponseError, match="incomplete list"):
            _operator(warehouse_conn, unique_table).execute({"ti": TI})
        (refused,) = _runs(warehouse_conn, unique_table).to_dict("records")
        assert refused["status"] == "refused" and "incomplete list" in refused["reason"]
        assert _value(refused["rows_in_list"]) is None and _value(refused["list_sha256"]) is None

    def test_row_and_change_commit_together(self, monkeypatch, sandbox, warehouse_conn, unique_table):
        _operator(warehouse_conn, unique_table).execute({})
        before = _table(warehouse_conn, unique_table)
        sandbox.state.add("+33655500077")
        real_insert_row = SqlTableWriter.insert_row

        def insert_then_fail(self, conn, values):
            real_insert_row(self, conn, values)
            raise RuntimeError("simulated failure after the run-log row")

        monkeypatch.setattr(SqlTableWriter, "insert_row", insert_then_fail)
        with pytest.raises(RuntimeError, match="after the run-log row"):
            _operator(warehouse_conn, unique_table).execute({})
        pd.testing.assert_frame_equal(_table(warehouse_conn, unique_table), before)
        assert len(_runs(warehouse_conn, unique_table)) == 1  # the failed run's row rolled back

    def test_disabled(self, warehouse_conn, unique_table):
        _operator(warehouse_conn, unique_table, run_log_table=None).execute({})
        assert _tables_like(warehouse_conn, unique_table) == [unique_table]


class TestRunLogName:
    @pytest.mark.parametrize(
        ("table", "setting", "expected"),
        [
            ("stops", "{table}_runs", "stops_runs"),
            ("mart.stops", "{table}_runs", "mart.stops_runs"),
            ("mart.stops", "audit.{table}_log", "audit.mart.stops_log"),
            ("stops", "extract_runs", "extract_runs"),
        ],
        ids=["default", "schema", "own-schema", "fixed"],
    )
    def test_name(self, table, setting, expected):
        assert run_log_table_name(table, setting) == expected

    def test_long_names_are_cut_and_kept_apart(self):
        first, second = run_log_table_name("a" * 61 + "x"), run_log_table_name("a" * 61 + "y")
        assert len(first) == len(second) == 63 and first != second

    def test_task_identity_from_a_task_instance(self):
        operator = _operator("any", "stops")
        assert task_identity({"ti": TI}, operator) == vars(TI)
        assert task_identity({"run_id": "manual__1"}, operator) == {
            "dag_id": None,
            "run_id": "manual__1",
            "task_id": "extract",
            "try_number": None,
        }


@pytest.mark.usefixtures("smspartner_conn", "drop_after")
class TestFirstSeen:
    def test_kept_across_upserts_and_replace(self, sandbox, warehouse_conn, unique_table):
        _operator(warehouse_conn, unique_table, "upsert").execute({})
        entries = sandbox.state.list_entries()
        kept, gone = entries[0][0], entries[1][0]
        for stop_id in (kept, gone):
            _update_row(warehouse_conn, unique_table, stop_id, first_seen_at=OLD)
        sandbox.state.remove(gone)
        sandbox.state.add("+33655500088")
        _operator(warehouse_conn, unique_table, "upsert").execute({})
        table = _table(warehouse_conn, unique_table).set_index("stop_id")
        assert table.loc[kept, "first_seen_at"] == table.loc[gone, "first_seen_at"] == OLD
        new = table.loc[table["first_seen_at"] > OLD]
        assert (new["first_seen_at"] <= new["extracted_at"]).all()
        added = table.index[~table.index.isin([e[0] for e in entries])]
        assert table.loc[added[0], "first_seen_at"] == table.loc[added[0], "extracted_at"]

        sandbox.state.add("+33655500099")
        _operator(warehouse_conn, unique_table, "replace").execute({})
        again = _table(warehouse_conn, unique_table).set_index("stop_id")
        assert again.loc[kept, "first_seen_at"] == OLD
        assert gone not in again.index
        assert again.loc[added[0], "first_seen_at"] == table.loc[added[0], "first_seen_at"]


def _history_frame(now: datetime, stops: dict[int, str]) -> pd.DataFrame:
    frame = pd.DataFrame({"stop_id": list(stops), "phone_number": list(stops.values())})
    frame["phone_e164"] = frame["phone_number"]
    frame["created_at"] = pd.Timestamp(now) - pd.Timedelta(hours=1)
    frame["extracted_at"] = pd.Timestamp(now)
    frame["removed_at"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
    return frame


class TestPointInTime:
    """``stop_list_as_of_sql`` against a scripted history: add, remove, add the same number again."""

    A, B = "+33612345601", "+33612345602"
    T1 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=timezone.utc)
    T2, T3, T4 = T1 + timedelta(days=1), T1 + timedelta(days=2), T1 + timedelta(days=3)

    @pytest.fixture
    def history(self, warehouse_conn) -> Iterator[SqlTableWriter]:
        table = f"history_{uuid.uuid4().hex[:10]}"
        writer = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, stop_list_table_spec())
        try:
            for now, stops in [
                (self.T1, {1: self.A, 2: self.B}),
                (self.T2, {2: self.B}),  # A leaves the list
                (self.T3, {2: self.B, 3: self.A}),  # A is back, under a new stop id
                (self.T4, {3: self.A}),  # B leaves
            ]:
                writer.write(_history_frame(now, stops), "upsert", now=now)
            yield writer
        finally:
            writer.hook.run(f"DROP TABLE IF EXISTS {table}")

    @pytest.mark.parametrize(
        ("at", "on_list"),
        [
            (T1 - timedelta(seconds=1), set()),
            (T1, {(1, A), (2, B)}),
            (T1 + timedelta(hours=5, microseconds=5), {(1, A), (2, B)}),
            (T2, {(2, B)}),
            (T2 + timedelta(hours=12), {(2, B)}),
            (T3, {(2, B), (3, A)}),
            (T4, {(3, A)}),
            (T4 + timedelta(days=300), {(3, A)}),
        ],
        ids=["before", "first-run", "same-day", "removed", "gap", "re-added", "b-removed", "today"],
    )
    def test_on_the_list_at(self, history, at, on_list):
        sql = stop_list_as_of_sql(str(history.table), at, history.dialect_name)
        rows = history.hook.get_records(sql)
        assert {(int(r[0]), r[2]) for r in rows} == on_list

    def test_naive_instant_is_utc(self, history):
        naive, aware = self.T2.replace(tzinfo=None), self.T2
        dialect = history.dialect_name
        assert stop_list_as_of_sql("t", naive, dialect) == stop_list_as_of_sql("t", aware, dialect)

    def test_table_name_is_checked(self):
        with pytest.raises(ValueError, match="Invalid table name"):
            stop_list_as_of_sql("t; DROP TABLE x", self.T1, "postgresql")


class TestAssetEvents:
    @pytest.mark.usefixtures("smspartner_conn")
    def test_outlet_events_carry_the_change(self, sandbox, sqlite_conn):
        from airflow.sdk import Asset, AssetAlias
        from airflow.sdk.execution_time.context import OutletEventAccessors

        asset, alias = Asset("smspartner_stop_list_test"), AssetAlias("stop_lists")
        events = OutletEventAccessors()
        operator = _operator(sqlite_conn, "stops", "upsert", outlets=[asset, alias])
        summary = operator.execute({"outlet_events": events})
        assert events[asset].extra == {
            "rows_in_list": 5,
            "inserted": 5,
            "updated": 0,
            "removed": 0,
            "list_sha256": live_sha256(sandbox),
        }
        assert {k: summary[k] for k in events[asset].extra} == events[asset].extra
        assert events[alias].asset_alias_events == []
        json.dumps(events[asset].extra)  # stored as JSON

        again = OutletEventAccessors()
        operator.execute({"outlet_events": again})
        assert (again[asset].extra["inserted"], again[asset].extra["removed"]) == (0, 0)


@pytest.mark.usefixtures("smspartner_conn")
class TestPostgresReplace:
    """PostgreSQL's replace truncates, loads and rebuilds the indexes: the table stays the same object."""

    @pytest.fixture
    def table(self, postgres_conn) -> Iterator[str]:
        name = f"stops_{uuid.uuid4().hex[:10]}"
        yield name
        hook = resolve_dbapi_hook(postgres_conn)
        hook.run(f"DROP VIEW IF EXISTS {name}_live")
        hook.run(f"DROP TABLE IF EXISTS {name}_child, {name}, {name}_runs")

    def _indexes(self, hook, table: str) -> dict[str, str]:
        return dict(
            hook.get_records(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", parameters=(table,)
            )
        )

    def test_views_grants_and_indexes_survive(self, sandbox, postgres_conn, table):
        hook = resolve_dbapi_hook(postgres_conn)
        role = f"smsp_reader_{uuid.uuid4().hex[:8]}"
        _operator(postgres_conn, table).execute({})
        hook.run(
            f"CREATE VIEW {table}_live AS SELECT stop_id, phone_e164 FROM {table} WHERE removed_at IS NULL"
        )
        hook.run(f"CREATE ROLE {role}")
        try:
            hook.run(f"GRANT SELECT ON {table}, {table}_live TO {role}")
            oid = hook.get_first("SELECT CAST(%s AS regclass)::oid", parameters=(table,))[0]
            indexes = self._indexes(hook, table)
            assert any("text_pattern_ops" in d for d in indexes.values())  # the phone_e164 index
            sandbox.state.remove(sandbox.state.list_entries()[0][0])
            sandbox.state.add("+33655500111")
            summary = _operator(postgres_conn, table).execute({})
            assert (summary["inserted"], summary["removed"]) == (1, 1)
            assert hook.get_first("SELECT CAST(%s AS regclass)::oid", parameters=(table,))[0] == oid
            assert self._indexes(hook, table) == indexes
            assert hook.get_first(
                "SELECT has_table_privilege(%s, %s, 'SELECT'), has_table_privilege(%s, %s, 'SELECT')",
                parameters=(role, table, role, f"{table}_live"),
            ) == (True, True)
            live = {(int(i), p) for i, p in hook.get_records(f"SELECT stop_id, phone_e164 FROM {table}_live")}
            assert live == _current_list(sandbox)
            key = hook.get_first(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = CAST(%s AS regclass) "
                "AND contype = 'p'",
                parameters=(table,),
            )
            assert key == ("PRIMARY KEY (stop_id)",)
        finally:
            hook.run(f"DROP VIEW IF EXISTS {table}_live")
            hook.run(f"DROP OWNED BY {role}")
            hook.run(f"DROP ROLE {role}")

    def test_table_referenced_by_a_deferrable_foreign_key_is_reloaded_with_delete(
        self, sandbox, postgres_conn, table
    ):
        hook = resolve_dbapi_hook(postgres_conn)
        _operator(postgres_conn, table).execute({})
        kept = sandbox.state.list_entries()[1][0]
        hook.run(
            f"CREATE TABLE {table}_child (stop_id BIGINT REFERENCES {table} (stop_id) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
        hook.run(f"INSERT INTO {table}_child VALUES ({kept})")
        indexes = self._indexes(hook, table)
        sandbox.state.remove(sandbox.state.list_entries()[0][0])
        assert _operator(postgres_conn, table).execute({})["removed"] == 1
        assert {r[0] for r in hook.get_records(f"SELECT stop_id FROM {table}")} == {
            i for i, _ in _current_list(sandbox)
        }
        assert self._indexes(hook, table) == indexes
