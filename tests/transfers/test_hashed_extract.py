"""Keyed-hash mode (``hash_key_conn_id``) of the extract and of the stop-list operator, against the
sandbox and real SQLite, PostgreSQL and MariaDB: no number of the list is written in clear."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_smspartner.exceptions import SmsPartnerConfigError, StopListGuardError
from airflow_provider_smspartner.operators.smspartner import SmsPartnerStopListOperator
from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.sql.tables import (
    hashed_stop_list_table_spec,
    run_log_table_name,
    run_log_table_spec,
)
from airflow_provider_smspartner.sql.writer import SqlTableWriter
from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator

KEY = "k" * 16 + "0123456789abcdefXYZ"
NEW_KEY = "n" * 16 + "fedcba9876543210XYZ"
HASHED_COLUMNS = [
    "stop_id",
    "phone_hash",
    "hash_key_id",
    "created_at",
    "first_seen_at",
    "extracted_at",
    "removed_at",
]


def _use_key(
    monkeypatch: pytest.MonkeyPatch, password: str, key_id: str | None = "k1", conn_id: str = "hash_key"
) -> str:
    extra = {} if key_id is None else {"key_id": key_id}
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({"conn_type": "generic", "password": password, "extra": extra}),
    )
    return conn_id


@pytest.fixture
def hash_key(monkeypatch: pytest.MonkeyPatch) -> str:
    return _use_key(monkeypatch, KEY)


def _extract(conn_id: str, table: str, mode: str = "replace", **kwargs) -> SmsPartnerStopListToSqlOperator:
    return SmsPartnerStopListToSqlOperator(
        task_id="extract", sql_conn_id=conn_id, table=table, mode=mode, **kwargs
    )


def _hmac(key: str, e164: str) -> str:
    return hmac.new(key.encode(), e164.encode(), hashlib.sha256).hexdigest()


def _rows(conn_id: str, table: str) -> pd.DataFrame:
    frame = SqlTableWriter(resolve_dbapi_hook(conn_id), table, hashed_stop_list_table_spec()).read_frame()
    frame.columns = [c.lower() for c in frame.columns]
    return frame.sort_values("stop_id").reset_index(drop=True)


def _expected(sandbox, key: str) -> dict[int, str]:
    # The sandbox sends E.164, so the number as sent is the one hashed.
    return {stop_id: _hmac(key, phone) for stop_id, phone, _ in sandbox.state.list_entries()}


def _forms(e164: str) -> list[str]:
    """The forms a number could leak in: E.164, without the plus, national (grouped or not)."""
    national = "0" + e164[3:]
    grouped = " ".join([national[:2], *(national[i : i + 2] for i in range(2, 10, 2))])
    return [e164, e164[1:], national, grouped, e164[3:]]


def _leaks(text: str, numbers: list[str]) -> list[str]:
    return [form for number in numbers for form in _forms(number) if form in text]


def _text_columns(conn_id: str, tables: list[str]) -> str:
    """Every value of every column of ``tables``, as text."""
    hook = resolve_dbapi_hook(conn_id)
    engine = sa.create_engine(hook.get_uri())
    values: list[str] = []
    with engine.connect() as conn:
        for name in tables:
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            for row in conn.execute(sa.select(table)):
                values.extend(str(value) for value in row)
    engine.dispose()
    return "\n".join(values)


class TestHashedExtract:
    def test_table_holds_hmac_of_the_e164_numbers(
        self, smspartner_conn, sandbox, warehouse_conn, unique_table, hash_key
    ):
        summary = _extract(warehouse_conn, unique_table, hash_key_conn_id=hash_key).execute({})
        rows = _rows(warehouse_conn, unique_table)
        assert list(rows.columns) == HASHED_COLUMNS
        assert dict(zip(rows["stop_id"], rows["phone_hash"], strict=True)) == _expected(sandbox, KEY)
        assert set(rows["hash_key_id"]) == {"k1"}
        assert summary["rows_in_list"] == len(rows) == 5

    def test_unreadable_number_has_no_hash(
        self, monkeypatch, smspartner_conn, sandbox, warehouse_conn, unique_table, hash_key
    ):
        from tests.helpers import serve_list_rows

        created = "2025-01-02 03:04:05"
        serve_list_rows(monkeypatch, sandbox, [(1, "+33612345601", created), (2, "junk", created)])
        _extract(warehouse_conn, unique_table, hash_key_conn_id=hash_key).execute({})
        rows = _rows(warehouse_conn, unique_table)
        assert rows["phone_hash"].iloc[0] == _hmac(KEY, "+33612345601")
        assert pd.isna(rows["phone_hash"].iloc[1])
        again = _extract(warehouse_conn, unique_table, "upsert", hash_key_conn_id=hash_key).execute({})
        assert (again["inserted"], again["updated"], again["removed"]) == (0, 0, 0)

    def test_key_id_defaults_to_the_fingerprint(
        self, monkeypatch, smspartner_conn, sqlite_conn, unique_table
    ):
        from airflow_provider_smspartner.utils.hash_key import key_fingerprint

        conn_id = _use_key(monkeypatch, KEY, key_id=None)
        _extract(sqlite_conn, unique_table, hash_key_conn_id=conn_id).execute({})
        assert set(_rows(sqlite_conn, unique_table)["hash_key_id"]) == {key_fingerprint(KEY)}

    def test_replace_follows_the_list(self, smspartner_conn, sandbox, warehouse_conn, unique_table, hash_key):
        _extract(warehouse_conn, unique_table, hash_key_conn_id=hash_key).execute({})
        sandbox.state.remove(sandbox.state.list_entries()[0][0])
        sandbox.state.add("+33655500011")
        summary = _extract(warehouse_conn, unique_table, hash_key_conn_id=hash_key).execute({})
        assert (summary["inserted"], summary["removed"]) == (1, 1)
        rows = _rows(warehouse_conn, unique_table)
        assert dict(zip(rows["stop_id"], rows["phone_hash"], strict=True)) == _expected(sandbox, KEY)

    def test_upsert_keeps_history(self, smspartner_conn, sandbox, warehouse_conn, unique_table, hash_key):
        _extract(warehouse_conn, unique_table, "upsert", hash_key_conn_id=hash_key).execute({})
        gone = sandbox.state.list_entries()[0][0]
        sandbox.state.remove(gone)
        sandbox.state.add("+33655500022")
        summary = _extract(warehouse_conn, unique_table, "upsert", hash_key_conn_id=hash_key).execute({})
        assert (summary["inserted"], summary["updated"], summary["removed"]) == (1, 0, 1)
        rows = _rows(warehouse_conn, unique_table)
        assert len(rows) == 6
        removed = rows.loc[rows["removed_at"].notna(), "stop_id"].tolist()
        assert removed == [gone]

    def test_append_inserts_only_new_stop_ids(
        self, smspartner_conn, sandbox, warehouse_conn, unique_table, hash_key
    ):
        _extract(warehouse_conn, unique_table, "append", hash_key_conn_id=hash_key).execute({})
        sandbox.state.add("+33655500033")
        summary = _extract(warehouse_conn, unique_table, "append", hash_key_conn_id=hash_key).execute({})
        assert summary["inserted"] == 1
        assert len(_rows(warehouse_conn, unique_table)) == 6

    def test_guard_and_run_log(self, smspartner_conn, sandbox, warehouse_conn, unique_table, hash_key):
        _extract(warehouse_conn, unique_table, "upsert", hash_key_conn_id=hash_key).execute({})
        sandbox.state.clear()
        with pytest.raises(StopListGuardError, match="empty stop list"):
            _extract(warehouse_conn, unique_table, "upsert", hash_key_conn_id=hash_key).execute({})
        log = SqlTableWriter(
            resolve_dbapi_hook(warehouse_conn), run_log_table_name(unique_table), run_log_table_spec()
        ).read_frame()
        log.columns = [c.lower() for c in log.columns]
        assert sorted(log["status"]) == ["applied", "refused"]
        assert len(_rows(warehouse_conn, unique_table)) == 5

    def test_point_in_time_query(self, smspartner_conn, sandbox, warehouse_conn, unique_table, hash_key):
        from datetime import datetime, timedelta, timezone

        from airflow_provider_smspartner.transfers.smspartner_to_sql import stop_list_as_of_sql

        _extract(warehouse_conn, unique_table, "upsert", hash_key_conn_id=hash_key).execute({})
        hook = resolve_dbapi_hook(warehouse_conn)
        at = datetime.now(timezone.utc) + timedelta(minutes=1)
        sql = stop_list_as_of_sql(unique_table, at, hook.dialect_name, hashed=True)
        with SqlTableWriter(hook, unique_table, hashed_stop_list_table_spec()).engine.connect() as conn:
            found = {int(row[0]): row[1] for row in conn.execute(sa.text(sql))}
        assert found == _expected(sandbox, KEY)

    def test_asset_extra_and_lineage(self, smspartner_conn, sandbox, sqlite_conn, unique_table, hash_key):
        operator = _extract(sqlite_conn, unique_table, hash_key_conn_id=hash_key)
        summary = operator.execute({})
        assert _leaks(json.dumps(summary), [p for _, p, _ in sandbox.state.list_entries()]) == []
        lineage = operator.get_openlineage_facets_on_complete(None)
        fields = [f.name for f in lineage.outputs[0].facets["schema"].fields]
        assert fields == HASHED_COLUMNS

    def test_short_key_is_refused_before_any_call(
        self, monkeypatch, smspartner_conn, sandbox, sqlite_conn, unique_table
    ):
        conn_id = _use_key(monkeypatch, "too-short")
        with pytest.raises(SmsPartnerConfigError, match="at least 32 characters"):
            _extract(sqlite_conn, unique_table, hash_key_conn_id=conn_id).execute({})
        assert sandbox.stats.count() == 0


class TestModeAndKeyMismatch:
    def test_clear_table_refuses_a_hashed_run(
        self, smspartner_conn, sandbox, warehouse_conn, unique_table, hash_key
    ):
        _extract(warehouse_conn, unique_table).execute({})
        sandbox.reset_stats()
        with pytest.raises(SmsPartnerConfigError, match=r"in clear \(phone_number\)"):
            _extract(warehouse_conn, unique_table, hash_key_conn_id=hash_key).execute({})
        assert sandbox.stats.count() == 0

    def test_hashed_table_refuses_a_clear_run(
        self, smspartner_conn, sandbox, warehouse_conn, unique_table, hash_key
    ):
        _extract(warehouse_conn, unique_table, hash_key_conn_id=hash_key).execute({})
        sandbox.reset_stats()
        with pytest.raises(SmsPartnerConfigError, match=r"hashed numbers \(phone_hash\)"):
            _extract(warehouse_conn, unique_table).execute({})
        assert sandbox.stats.count() == 0

    @pytest.mark.parametrize("mode", ["upsert", "append"])
    def test_other_key_is_refused(
        self, monkeypatch, smspartner_conn, sandbox, warehouse_conn, unique_table, hash_key, mode
    ):
        _extract(warehouse_conn, unique_table, mode, hash_key_conn_id=hash_key).execute({})
        new_key = _use_key(monkeypatch, NEW_KEY, key_id="k2", conn_id="new_key")
        sandbox.reset_stats()
        with pytest.raises(
            SmsPartnerConfigError, match=r"hashed with key id\(s\) k1, not 'k2'.*mode='replace'"
        ):
            _extract(warehouse_conn, unique_table, mode, hash_key_conn_id=new_key).execute({})
        assert sandbox.stats.count() == 0
        assert set(_rows(warehouse_conn, unique_table)["hash_key_id"]) == {"k1"}

    def test_replace_rotates_the_key(
        self, monkeypatch, smspartner_conn, sandbox, warehouse_conn, unique_table, hash_key
    ):
        _extract(warehouse_conn, unique_table, "upsert", hash_key_conn_id=hash_key).execute({})
        sandbox.state.remove(sandbox.state.list_entries()[0][0])  # history the rotation drops
        _extract(warehouse_conn, unique_table, "upsert", hash_key_conn_id=hash_key).execute({})
        new_key = _use_key(monkeypatch, NEW_KEY, key_id="k2", conn_id="new_key")
        _extract(warehouse_conn, unique_table, "replace", hash_key_conn_id=new_key).execute({})
        rows = _rows(warehouse_conn, unique_table)
        assert set(rows["hash_key_id"]) == {"k2"}
        assert dict(zip(rows["stop_id"], rows["phone_hash"], strict=True)) == _expected(sandbox, NEW_KEY)
        # The documented query: which key a table uses.
        with SqlTableWriter(
            resolve_dbapi_hook(warehouse_conn), unique_table, hashed_stop_list_table_spec()
        ).engine.connect() as conn:
            keys = [
                row[0] for row in conn.execute(sa.text(f"SELECT DISTINCT hash_key_id FROM {unique_table}"))
            ]
        assert keys == ["k2"]
        # Upsert goes on under the new key.
        _extract(warehouse_conn, unique_table, "upsert", hash_key_conn_id=new_key).execute({})


class TestNoNumberInClear:
    def _run_every_mode(self, conn_id: str, table: str, hash_key: str, sandbox) -> list[str]:
        numbers = [phone for _, phone, _ in sandbox.state.list_entries()]
        _extract(conn_id, table, "upsert", hash_key_conn_id=hash_key).execute({})
        sandbox.state.remove(sandbox.state.list_entries()[0][0])
        sandbox.state.add("+33655500044")
        numbers.append("+33655500044")
        _extract(conn_id, table, "upsert", hash_key_conn_id=hash_key).execute({})
        _extract(conn_id, table, "append", hash_key_conn_id=hash_key).execute({})
        _extract(conn_id, table, "replace", hash_key_conn_id=hash_key).execute({})
        return numbers

    def test_sqlite_file_bytes_and_logs(
        self, smspartner_conn, sandbox, sqlite_conn, unique_table, hash_key, caplog, capsys
    ):
        caplog.set_level(logging.INFO)
        numbers = self._run_every_mode(sqlite_conn, unique_table, hash_key, sandbox)
        path = Path(resolve_dbapi_hook(sqlite_conn).get_connection(sqlite_conn).host)
        content = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))
        assert _hmac(KEY, numbers[1]).encode() in content  # the scan reads the table's bytes
        assert [form for n in numbers for form in _forms(n) if form.encode() in content] == []
        logs = caplog.text + capsys.readouterr().out
        assert _leaks(logs, numbers) == []
        assert "Fetched 5 stops" in logs  # the task's log lines were captured

    @pytest.mark.parametrize("server", ["postgres", "mysql"])
    def test_every_text_column_and_logs(
        self, request, smspartner_conn, sandbox, unique_table, hash_key, caplog, capsys, server
    ):
        conn_id = request.getfixturevalue(f"{server}_conn")
        caplog.set_level(logging.INFO)
        numbers = self._run_every_mode(conn_id, unique_table, hash_key, sandbox)
        text = _text_columns(conn_id, [unique_table, run_log_table_name(unique_table)])
        assert _leaks(text, numbers) == []
        logs = caplog.text + capsys.readouterr().out
        assert _leaks(logs, numbers) == []
        assert "Fetched 5 stops" in logs


class TestHashedStopListOperator:
    def test_dataframe_has_the_hashed_columns(self, smspartner_conn, sandbox, hash_key, caplog, capsys):
        caplog.set_level(logging.INFO)
        frame = SmsPartnerStopListOperator(task_id="stops", hash_key_conn_id=hash_key).execute({})
        assert list(frame.columns) == ["stop_id", "phone_hash", "hash_key_id", "created_at"]
        assert dict(zip(frame["stop_id"], frame["phone_hash"], strict=True)) == _expected(sandbox, KEY)
        numbers = [phone for _, phone, _ in sandbox.state.list_entries()]
        assert _leaks(frame.to_json(date_format="iso"), numbers) == []
        logs = caplog.text + capsys.readouterr().out
        assert _leaks(logs, numbers) == []
        assert "Fetched 5 stops" in logs

    @pytest.mark.parametrize("output_format", ["parquet", "csv"])
    def test_file_holds_no_number(self, smspartner_conn, sandbox, hash_key, tmp_path, output_format):
        target = tmp_path / f"stops.{output_format}"
        SmsPartnerStopListOperator(
            task_id="stops", hash_key_conn_id=hash_key, output_path=str(target), output_format=output_format
        ).execute({})
        numbers = [phone for _, phone, _ in sandbox.state.list_entries()]
        content = target.read_bytes()
        assert [form for n in numbers for form in _forms(n) if form.encode() in content] == []
        frame = pd.read_parquet(target) if output_format == "parquet" else pd.read_csv(target)
        assert list(frame.columns) == ["stop_id", "phone_hash", "hash_key_id", "created_at"]
        assert dict(zip(frame["stop_id"], frame["phone_hash"], strict=True)) == _expected(sandbox, KEY)

    def test_short_key_is_refused_before_any_call(self, monkeypatch, smspartner_conn, sandbox):
        conn_id = _use_key(monkeypatch, "x" * 31)
        with pytest.raises(SmsPartnerConfigError, match="at least 32 characters"):
            SmsPartnerStopListOperator(task_id="stops", hash_key_conn_id=conn_id).execute({})
        assert sandbox.stats.count() == 0

    def test_templated(self):
        assert "hash_key_conn_id" in SmsPartnerStopListOperator.template_fields
        assert "hash_key_conn_id" in SmsPartnerStopListToSqlOperator.template_fields
