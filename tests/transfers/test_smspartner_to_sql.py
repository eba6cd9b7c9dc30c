"""SmsPartnerStopListToSqlOperator against the sandbox and real SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_smspartner.exceptions import SmsPartnerAuthError, SmsPartnerResponseError
from airflow_provider_smspartner.transfers.smspartner_to_sql import (
    SmsPartnerStopListToSqlOperator,
    stop_list_table_spec,
)
from airflow_provider_smspartner.utils.sql_writer import SqlTableWriter, resolve_dbapi_hook
from tests.conftest import smspartner_connection_json


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
    for column in ("created_at", "extracted_at", "removed_at"):
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


@pytest.mark.usefixtures("smspartner_conn", "drop_after")
class TestModes:
    def test_replace_holds_exactly_the_current_list(self, sandbox, warehouse_conn, unique_table):
        first = _operator(warehouse_conn, unique_table).execute({})
        assert first == {
            "rows_in_list": 5,
            "inserted": 5,
            "updated": 0,
            "removed": 0,
            "table": unique_table,
            "mode": "replace",
        }
        entries = sandbox.state.list_entries()
        sandbox.state.remove(entries[0][0])
        sandbox.state.remove(entries[1][0])
        sandbox.state.add("+33655500011")
        second = _operator(warehouse_conn, unique_table).execute({})
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
        summary = _operator(warehouse_conn, unique_table).execute({})
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
        assert _tables_like(warehouse_conn, unique_table) == [unique_table]  # staging dropped


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
            hook.run(f"DROP TABLE IF EXISTS public.{unique_table}")

    def test_sqlite_stores_iso_text(self, sqlite_conn):
        _operator(sqlite_conn, "stops").execute({})
        value = resolve_dbapi_hook(sqlite_conn).get_first("SELECT created_at FROM stops")[0]
        assert isinstance(value, str) and value.endswith("Z") and "T" in value
