"""The one keyed-hash mode check (sql/hash_mode.py) of the extract's stop list and of
PhoneNumbersToSqlOperator's contacts, on real SQLite, PostgreSQL and MariaDB: the check before the
run, and the re-check inside the write's transaction that catches another run re-keying the table
in between."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_smspartner.exceptions import SmsPartnerConfigError
from airflow_provider_smspartner.sql import hash_mode
from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.sql.ddl import TableShapeError
from airflow_provider_smspartner.sql.hash_mode import HashModeRules, check_hash_mode, hash_key_recheck
from airflow_provider_smspartner.sql.names import TableName
from airflow_provider_smspartner.sql.tables import run_log_table_name
from airflow_provider_smspartner.transfers import phone_numbers_to_sql, smspartner_to_sql
from airflow_provider_smspartner.utils.hash_key import HashKey
from tests.helpers import drop_table, query_frame
from tests.transfers.test_hashed_extract import KEY, NEW_KEY, _extract, _use_key
from tests.transfers.test_phone_numbers_to_sql import _operator, _source

K1 = HashKey(key=KEY.encode(), key_id="k1", conn_id="hash_key")
K2 = HashKey(key=NEW_KEY.encode(), key_id="k2", conn_id="new_key")
#: Each operator's rules, by the name of the table it writes.
RULES = {"stop_list": smspartner_to_sql.HASH_MODE_RULES, "contacts": phone_numbers_to_sql.HASH_MODE_RULES}
#: What each operator's refusal of a key change says about why.
WHY = {"stop_list": "re-hashed without their numbers", "contacts": "match nothing hashed under the new one"}
#: The modes each operator refuses under another key.
REFUSED_MODES = [("stop_list", "upsert"), ("stop_list", "append"), ("contacts", "upsert")]


@pytest.fixture
def names(warehouse_conn: str) -> Iterator[dict[str, str]]:
    """Unique table names: a destination, its run log and a contacts source; dropped after."""
    suffix = uuid.uuid4().hex[:10]
    found = {"table": f"hm_{suffix}", "source": f"hm_src_{suffix}"}
    yield found
    for table in [*found.values(), run_log_table_name(found["table"])]:
        drop_table(warehouse_conn, table)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The connections of K1 (``hash_key``) and K2 (``new_key``)."""
    return _use_key(monkeypatch, KEY), _use_key(monkeypatch, NEW_KEY, key_id="k2", conn_id="new_key")


def _create(conn_id: str, table: str, columns: tuple[str, ...], rows: list[tuple] | None = None) -> None:
    engine = resolve_dbapi_hook(conn_id).get_sqlalchemy_engine()
    target = sa.Table(table, sa.MetaData(), *(sa.Column(name, sa.String(64)) for name in columns))
    try:
        with engine.begin() as conn:
            target.create(conn)
            if rows:
                conn.execute(sa.insert(target), [dict(zip(columns, row, strict=True)) for row in rows])
    finally:
        engine.dispose()


def _clear(rules: HashModeRules) -> tuple[str, ...]:
    return ("id", rules.clear_column)


HASHED = ("id", "phone_hash", "hash_key_id")


def _check(conn_id: str, table: str, key: HashKey | None, mode: str, shape: str) -> str | None:
    return check_hash_mode(resolve_dbapi_hook(conn_id), TableName.parse(table), key, mode, RULES[shape])


@pytest.mark.parametrize("shape", list(RULES))
class TestCheckHashMode:
    def test_a_missing_table_takes_either_mode(self, warehouse_conn, names, shape):
        assert _check(warehouse_conn, names["table"], None, "upsert", shape) is None
        assert _check(warehouse_conn, names["table"], K1, "upsert", shape) is None

    def test_clear_table_refuses_a_hashed_run(self, warehouse_conn, names, shape):
        clear = RULES[shape].clear_column
        _create(warehouse_conn, names["table"], _clear(RULES[shape]), [("1", "+33612345678")])
        assert _check(warehouse_conn, names["table"], None, "upsert", shape) is None
        with pytest.raises(
            SmsPartnerConfigError, match=rf"in clear \({clear}\).*'hash_key'.*Nothing was written"
        ):
            _check(warehouse_conn, names["table"], K1, "replace", shape)

    def test_hashed_table_refuses_a_clear_run(self, warehouse_conn, names, shape):
        clear = RULES[shape].clear_column
        _create(warehouse_conn, names["table"], HASHED, [("1", "a" * 64, "k1")])
        with pytest.raises(
            SmsPartnerConfigError, match=rf"hashed numbers \(phone_hash\).*writes {clear}.*hash_key_conn_id"
        ):
            _check(warehouse_conn, names["table"], None, "replace", shape)

    def test_the_same_key_passes(self, warehouse_conn, names, shape):
        _create(warehouse_conn, names["table"], HASHED, [("1", "a" * 64, "k1"), ("2", None, None)])
        assert _check(warehouse_conn, names["table"], K1, "upsert", shape) is None

    def test_replace_rotates_from_the_other_keys(self, warehouse_conn, names, shape, caplog):
        rows = [("1", "a" * 64, "k1"), ("2", "b" * 64, "k0"), ("3", None, None)]
        _create(warehouse_conn, names["table"], HASHED, rows)
        table = TableName.parse(names["table"])
        log = logging.getLogger("test_hash_mode")
        with caplog.at_level(logging.INFO, logger="test_hash_mode"):
            rotated = check_hash_mode(
                resolve_dbapi_hook(warehouse_conn), table, K2, "replace", RULES[shape], log
            )
        assert rotated == "k0, k1"
        assert (
            f"Key rotation: {table} is hashed with key id(s) k0, k1; replace rebuilds it under key id k2"
            in (caplog.text)
        )

    def test_a_table_of_neither_shape_is_left_to_the_writer(self, warehouse_conn, names, shape):
        _create(warehouse_conn, names["table"], ("id", "phone_hash"))
        assert _check(warehouse_conn, names["table"], None, "upsert", shape) is None
        assert _check(warehouse_conn, names["table"], K1, "upsert", shape) is None

    def test_clear_mode_needs_no_recheck(self, shape):
        assert hash_key_recheck(TableName.parse("t"), None, "upsert", RULES[shape]) is None


@pytest.mark.parametrize(("shape", "mode"), REFUSED_MODES)
def test_other_key_is_refused_with_the_operators_reason(warehouse_conn, names, shape, mode):
    _create(warehouse_conn, names["table"], HASHED, [("1", "a" * 64, "k1")])
    with pytest.raises(
        SmsPartnerConfigError,
        match=rf"hashed with key id\(s\) k1, not 'k2' \(connection 'new_key'\): {mode} cannot change "
        rf"the key, because .*{WHY[shape]}.*mode='replace'.*Nothing was written",
    ):
        _check(warehouse_conn, names["table"], K2, mode, shape)


class TestRecheck:
    """The ``before_commit`` on its own, on a connection as the writer's."""

    def _recheck(self, conn_id: str, table: str, mode: str, shape: str = "stop_list") -> None:
        recheck = hash_key_recheck(TableName.parse(table), K1, mode, RULES[shape])
        assert recheck is not None
        engine = resolve_dbapi_hook(conn_id).get_sqlalchemy_engine()
        try:
            with engine.begin() as conn:
                recheck(conn, None)  # type: ignore[arg-type]
        finally:
            engine.dispose()

    def test_only_this_runs_key_passes(self, warehouse_conn, names):
        _create(warehouse_conn, names["table"], HASHED, [("1", "a" * 64, "k1"), ("2", None, None)])
        self._recheck(warehouse_conn, names["table"], "upsert")

    @pytest.mark.parametrize(("shape", "mode"), REFUSED_MODES)
    def test_another_key_is_refused(self, warehouse_conn, names, shape, mode):
        _create(warehouse_conn, names["table"], HASHED, [("1", "a" * 64, "k1"), ("2", "b" * 64, "k2")])
        with pytest.raises(
            SmsPartnerConfigError,
            match=rf"key id\(s\) k2 besides 'k1'.*{mode} is applied: another run wrote them.*"
            rf"{WHY[shape]}.*rolled back",
        ):
            self._recheck(warehouse_conn, names["table"], mode, shape)

    @pytest.mark.parametrize("shape", sorted(RULES))
    def test_a_rebuild_needs_no_recheck(self, shape):
        # The rebuilt table holds only the run's own rows (TestExtractRace: replace rebuilds
        # whatever came in between).
        for mode in RULES[shape].rebuild_modes:
            assert hash_key_recheck(TableName.parse("t"), K1, mode, RULES[shape]) is None


def _between_check_and_write(monkeypatch: pytest.MonkeyPatch, other_run: Callable[[], None]) -> None:
    """Run ``other_run`` right after the next :func:`check_hash_mode` passes, before the write
    starts: another run writing the table in between (its own check passes straight through)."""
    real = hash_mode.check_hash_mode
    pending = [other_run]

    def check_then_race(*args, **kwargs):
        result = real(*args, **kwargs)
        if pending:
            pending.pop()()
        return result

    monkeypatch.setattr(hash_mode, "check_hash_mode", check_then_race)


class TestExtractRace:
    @pytest.mark.parametrize("mode", ["upsert", "append"])
    def test_a_rekey_between_check_and_write_is_refused(
        self, monkeypatch, smspartner_conn, sandbox, warehouse_conn, names, keys, mode
    ):
        table = names["table"]
        hash_key, new_key = keys
        _extract(warehouse_conn, table, mode, hash_key_conn_id=hash_key).execute({})
        left: dict[str, object] = {}

        def rotate() -> None:
            _extract(warehouse_conn, table, "replace", hash_key_conn_id=new_key).execute({})
            left["rows"] = _table_rows(warehouse_conn, table)
            # This run's list then lacks a stop the rotation wrote (kept by upsert under k2), and
            # has one it did not (appended under k1).
            sandbox.state.remove(sandbox.state.list_entries()[0][0])
            sandbox.state.add("+33655500044")

        _between_check_and_write(monkeypatch, rotate)
        with pytest.raises(
            SmsPartnerConfigError,
            match=rf"key id\(s\) k2 besides 'k1'.*{mode} is applied: another run wrote them.*rolled back",
        ):
            _extract(warehouse_conn, table, mode, hash_key_conn_id=hash_key).execute({})
        assert _table_rows(warehouse_conn, table) == left["rows"]  # as the rotation left it
        assert {row[2] for row in left["rows"]} == {"k2"}
        # The run-log row was chained after the re-check: rolled back with the change.
        runs = query_frame(warehouse_conn, f"SELECT status FROM {run_log_table_name(table)}")
        assert runs["status"].tolist() == ["applied", "applied"]

    def test_replace_rebuilds_whatever_came_in_between(
        self, monkeypatch, smspartner_conn, sandbox, warehouse_conn, names, keys
    ):
        table = names["table"]
        hash_key, new_key = keys
        _extract(warehouse_conn, table, "upsert", hash_key_conn_id=hash_key).execute({})
        _between_check_and_write(
            monkeypatch,
            lambda: _extract(warehouse_conn, table, "replace", hash_key_conn_id=new_key).execute({}),
        )
        _extract(warehouse_conn, table, "replace", hash_key_conn_id=hash_key).execute({})
        assert {row[2] for row in _table_rows(warehouse_conn, table)} == {"k1"}

    @pytest.mark.parametrize("hashed_first", [True, False], ids=["became_hashed", "became_clear"])
    def test_a_table_of_the_other_mode_made_in_between_is_refused_by_the_writer(
        self, monkeypatch, smspartner_conn, sandbox, warehouse_conn, names, keys, hashed_first
    ):
        table = names["table"]
        other, this = (keys[0], None) if hashed_first else (None, keys[0])
        _between_check_and_write(
            monkeypatch, lambda: _extract(warehouse_conn, table, hash_key_conn_id=other).execute({})
        )
        missing = "'phone_number', 'phone_e164'" if hashed_first else "'phone_hash', 'hash_key_id'"
        with pytest.raises(TableShapeError, match=rf"lacks column\(s\) \[{missing}\]"):
            _extract(warehouse_conn, table, hash_key_conn_id=this).execute({})
        assert len(query_frame(warehouse_conn, f"SELECT * FROM {table}")) == 5  # the other run's


class TestContactsRace:
    ROWS = [(1, "0612345678"), (2, "x"), (3, "+41 78 123 45 67")]

    def _run(self, conn_id: str, names: dict[str, str], key: str | None, mode: str = "replace") -> None:
        _operator(conn_id, names["source"], names["table"], mode=mode, hash_key_conn_id=key).execute({})

    def test_a_rekey_between_check_and_write_is_refused(self, monkeypatch, warehouse_conn, names, keys):
        hash_key, new_key = keys
        _source(warehouse_conn, names["source"], self.ROWS)
        self._run(warehouse_conn, names, hash_key, "upsert")
        left: dict[str, object] = {}

        def rotate() -> None:
            self._run(warehouse_conn, names, new_key)
            left["rows"] = _table_rows(warehouse_conn, names["table"], key="contact_id")
            # This run's query then lacks a contact the rotation wrote: upsert keeps it under k2.
            _source(warehouse_conn, names["source"], self.ROWS[:2])

        _between_check_and_write(monkeypatch, rotate)
        with pytest.raises(
            SmsPartnerConfigError,
            match=r"key id\(s\) k2 besides 'k1'.*upsert is applied: another run wrote them.*"
            r"match nothing hashed under the new one.*rolled back",
        ):
            self._run(warehouse_conn, names, hash_key, "upsert")
        assert _table_rows(warehouse_conn, names["table"], key="contact_id") == left["rows"]
        assert {row[2] for row in left["rows"]} == {"k2"}

    @pytest.mark.parametrize("hashed_first", [True, False], ids=["became_hashed", "became_clear"])
    def test_a_table_of_the_other_mode_made_in_between_is_refused_by_the_writer(
        self, monkeypatch, warehouse_conn, names, keys, hashed_first
    ):
        other, this = (keys[0], None) if hashed_first else (None, keys[0])
        _source(warehouse_conn, names["source"], self.ROWS)
        _between_check_and_write(monkeypatch, lambda: self._run(warehouse_conn, names, other))
        missing = "'phone_e164'" if hashed_first else "'phone_hash', 'hash_key_id'"
        with pytest.raises(TableShapeError, match=rf"lacks column\(s\) \[{missing}\]"):
            self._run(warehouse_conn, names, this)
        assert len(query_frame(warehouse_conn, f"SELECT * FROM {names['table']}")) == 3  # the other run's


def _table_rows(conn_id: str, table: str, key: str = "stop_id") -> list[tuple]:
    """``(key, phone_hash, hash_key_id)`` of every row, by key."""
    frame = query_frame(conn_id, f"SELECT {key}, phone_hash, hash_key_id FROM {table} ORDER BY {key}")
    return [(int(k), None if pd.isna(h) else h, i) for k, h, i in frame.itertuples(index=False)]
