"""Keyed-hash mode (``hash_key_conn_id``) of the bulk add and remove operators, against the sandbox
and real SQLite, PostgreSQL and MariaDB: the results table holds ``phone_hash`` and
``hash_key_id`` in place of the numbers, every input ends as it does in clear, a retry recovers
its earlier tries from the hashes, and no number is written in clear anywhere."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_smspartner.bulk.numbers import MASKED_NUMBER, earlier_numbers, mask_number
from airflow_provider_smspartner.bulk.reconcile import recover_earlier
from airflow_provider_smspartner.bulk.results import (
    ResultsTable,
    ResultsTableError,
    TaskIdentity,
    final_outcomes_sql,
)
from airflow_provider_smspartner.exceptions import (
    InvalidPhoneNumberError,
    SmsPartnerAuthError,
    SmsPartnerConfigError,
)
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.operators.smspartner import (
    SmsPartnerAddStopsOperator,
    SmsPartnerRemoveStopsOperator,
)
from airflow_provider_smspartner.sandbox import SandboxServer
from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.utils.hash_key import resolve_hash_key
from tests.bulk.conftest import drop_results
from tests.conftest import TEST_API_KEY
from tests.helpers import (
    API_REJECTED,
    CONTEXT,
    listed_once,
    national,
    oracle_e164,
    query_frame,
    read_results,
    ti_context,
    use_sandbox,
)

KEY = "k" * 16 + "0123456789abcdefXYZ"
NEW_KEY = "n" * 16 + "fedcba9876543210XYZ"
HASHED_COLUMNS = [
    "dag_id",
    "run_id",
    "task_id",
    "map_index",
    "try_number",
    "input_row",
    "phone_hash",
    "hash_key_id",
    "status",
    "stop_id",
    "error_code",
    "error_message",
    "note",
    "decided_at",
]
#: Numbers the seeded sandbox does not list (checked by ``_new``), distinctive enough that no
#: other value of a table (a time, an id, a hash) holds one of their forms by chance.
NEW = ["+33651234871", "+33672819354", "+33698127364", "+33745182936", "+33612983745", "+33687451209"]


def _use_key(
    monkeypatch: pytest.MonkeyPatch, password: str, key_id: str = "k1", conn_id: str = "hash_key"
) -> str:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({"conn_type": "generic", "password": password, "extra": {"key_id": key_id}}),
    )
    return conn_id


@pytest.fixture
def hash_key(monkeypatch: pytest.MonkeyPatch) -> str:
    return _use_key(monkeypatch, KEY)


def _hmac(key: str, e164: str) -> str:
    return hmac.new(key.encode(), e164.encode(), hashlib.sha256).hexdigest()


def _new(api: Any) -> list[str]:
    assert not set(NEW) & api.state.phone_numbers()
    return list(NEW)


def _inputs(api: Any, kind: str) -> list[Any]:
    """Messy inputs: numbers in E.164, national, ``0033``, integer and grouped forms, repeats,
    junk, a number the API rejects (add) and numbers on the list."""
    new = _new(api)
    listed = sorted(api.state.phone_numbers())
    common = [new[0], national(new[1]), "junk", "", None, national(new[0]), new[1]]
    if kind == "add":
        rest = ["0033" + new[2][3:], int(new[3][1:]), listed[0], national(listed[1]), API_REJECTED[0]]
    else:
        rest = [listed[0], national(listed[1]), "0033" + listed[2][3:], int(listed[3][1:]), listed[0]]
    return common + rest


def _operator(kind: str, values: list[Any], table: str, conn_id: str, **kwargs: Any) -> Any:
    cls = SmsPartnerAddStopsOperator if kind == "add" else SmsPartnerRemoveStopsOperator
    kwargs.setdefault("max_failed", len(API_REJECTED))
    return cls(
        task_id=f"{kind}_stops", phone_numbers=values, results_table=table, results_conn_id=conn_id, **kwargs
    )


def _rows(conn_id: str, table: str) -> pd.DataFrame:
    return read_results(conn_id, table).sort_values(["try_number", "input_row"]).reset_index(drop=True)


def _has_table(conn_id: str, table: str) -> bool:
    engine = sa.create_engine(resolve_dbapi_hook(conn_id).get_uri())
    try:
        return sa.inspect(engine).has_table(table)
    finally:
        engine.dispose()


class TestHashedRows:
    @pytest.mark.parametrize("kind", ["add", "remove"])
    def test_phone_hash_is_the_hmac_of_the_e164_number(self, api, results_db, hash_key, kind):
        conn_id, table = results_db
        values = _inputs(api, kind)
        summary = _operator(kind, values, table, conn_id, hash_key_conn_id=hash_key).execute(CONTEXT)
        rows = _rows(conn_id, table)
        assert list(rows.columns) == HASHED_COLUMNS
        assert rows["input_row"].tolist() == list(range(len(values)))  # one row per input
        expected = [_hmac(KEY, e164) if (e164 := oracle_e164(v)) else None for v in values]
        assert [None if pd.isna(h) else h for h in rows["phone_hash"]] == expected
        assert set(rows["hash_key_id"]) == {"k1"}
        assert summary["total"] == len(values) and summary["results_table"] == table

    @pytest.mark.parametrize("kind", ["add", "remove"])
    def test_same_outcomes_as_in_clear(self, monkeypatch, sandbox, results_db, hash_key, kind):
        """The same inputs against two sandboxes holding the same list: in clear, then hashed."""
        conn_id, table = results_db
        values = _inputs(sandbox, kind)
        clear_table = f"{table}_clear"
        try:
            with SandboxServer(api_key=TEST_API_KEY, seed_stops=5, seed=7) as twin:
                assert twin.state.phone_numbers() == sandbox.state.phone_numbers()
                use_sandbox(monkeypatch, twin)
                clear = _operator(kind, values, clear_table, conn_id).execute(CONTEXT)
            use_sandbox(monkeypatch, sandbox)
            hashed = _operator(kind, values, table, conn_id, hash_key_conn_id=hash_key).execute(CONTEXT)
            in_clear, with_hash = _rows(conn_id, clear_table), _rows(conn_id, table)
        finally:
            drop_results(conn_id, clear_table)
        assert {**clear, "results_table": table} == hashed
        assert with_hash["status"].tolist() == in_clear["status"].tolist()
        assert with_hash["error_code"].isna().tolist() == in_clear["error_code"].isna().tolist()
        assert with_hash["stop_id"].isna().tolist() == in_clear["stop_id"].isna().tolist()
        hashes = [_hmac(KEY, e) if isinstance(e, str) else None for e in in_clear["phone_e164"]]
        assert [None if pd.isna(h) else h for h in with_hash["phone_hash"]] == hashes
        assert len(set(with_hash["status"])) >= 4  # the inputs do reach several outcomes

    def test_templated(self):
        for cls in (SmsPartnerAddStopsOperator, SmsPartnerRemoveStopsOperator):
            assert "hash_key_conn_id" in cls.template_fields


class TestRetry:
    @pytest.mark.parametrize("skip_existing", [True, False], ids=["diff", "no-diff"])
    def test_retry_after_a_stopped_try_sends_no_number_twice(
        self, api, monkeypatch, results_db, hash_key, skip_existing
    ):
        """Try 1 adds three numbers, then the API refuses the key; try 2 sends only the others
        (without the list diff, only the hashes of try 1's rows tell it what try 1 added)."""
        conn_id, table = results_db
        new = _new(api)
        values = [new[0], national(new[1]), "junk", *new[2:], new[0]]
        sent: Counter[str] = Counter()
        real_add = SmsPartnerHook.add_stop
        refuse_after = [3]

        def add_stop(hook: SmsPartnerHook, phone: str) -> Any:
            if sum(sent.values()) >= refuse_after[0]:
                raise SmsPartnerAuthError("Invalid API key", code=10)
            sent[phone] += 1
            return real_add(hook, phone)

        monkeypatch.setattr(SmsPartnerHook, "add_stop", add_stop)
        options = {"hash_key_conn_id": hash_key, "skip_existing": skip_existing, "max_workers": 1}
        with pytest.raises(SmsPartnerAuthError):
            _operator("add", values, table, conn_id, **options).execute(ti_context(1))
        refuse_after[0] = 10**6
        summary = _operator("add", values, table, conn_id, **options).execute(ti_context(2))

        assert set(sent) == set(new) and set(sent.values()) == {1}, sent
        assert api.stats.adds_applied == len(new) and listed_once(api, new)
        assert (summary["skipped_existing"], summary["added"]) == (3, len(new) - 3)
        rows = _rows(conn_id, table)
        first, second = rows[rows["try_number"] == 1], rows[rows["try_number"] == 2]
        assert first["status"].value_counts().to_dict() == {
            "added": 3,
            "not_processed": 2,
            "failed": 1,
            "invalid": 1,
            "duplicate": 1,
        }
        skipped = second[second["status"] == "skipped_existing"]
        assert set(skipped["note"]) == {"added by try 1 of this task instance"}
        assert set(skipped["phone_hash"]) == set(first.loc[first["status"] == "added", "phone_hash"])

    @pytest.mark.parametrize("skip_existing", [True, False], ids=["diff", "no-diff"])
    def test_pending_rows_of_a_killed_try_are_settled(self, api, results_db, hash_key, skip_existing):
        """Try 1 recorded 7 inputs pending (hashed) and was killed after 3 of its adds landed;
        the 7th is not an input of try 2. Try 2 records the 3 ``added`` under try 1, the 7th
        ``not_processed``, and sends only the other 3."""
        conn_id, table = results_db
        numbers = [*_new(api), "+33700000071"]
        key = resolve_hash_key(hash_key)
        identity = TaskIdentity("bulk_dag", "manual__2026-01-01", "add_stops", -1, 1)
        killed = ResultsTable(conn_id, table, hash_key=key).prepare(identity)
        now = pd.Timestamp("2026-01-02T03:04:05Z")
        pending = [(_hmac(KEY, n), "k1", "pending", None, None, None, None, now) for n in numbers]
        killed.insert([killed._row_tuple(i, *row) for i, row in enumerate(pending)])
        killed.close()
        api.state.seed_numbers(numbers[:3])  # what try 1's calls applied before the kill
        api.reset_stats()
        summary = _operator(
            "add", numbers[:6], table, conn_id, hash_key_conn_id=hash_key, skip_existing=skip_existing
        ).execute(ti_context(2))
        assert (summary["skipped_existing"], summary["added"]) == (3, 3)
        assert api.stats.count("stop-sms/add") == 3
        rows = _rows(conn_id, table)
        first = rows[rows["try_number"] == 1]
        assert first["status"].tolist() == ["added"] * 3 + ["not_processed"] * 4
        assert first["stop_id"].tolist()[:3] == [api.state.get_id(n) for n in numbers[:3]]
        final = query_frame(
            conn_id, f"SELECT * FROM ({final_outcomes_sql(table, hashed=True)}) f ORDER BY input_row"
        )
        assert final["status"].tolist() == ["added"] * 6 + ["not_processed"]
        assert final["decided_by_try"].tolist() == [1, 1, 1, 2, 2, 2, 1]
        assert final["phone_hash"].tolist() == [_hmac(KEY, n) for n in numbers]

    def test_pending_removals_of_a_killed_try_are_settled(self, api, sqlite_conn, hash_key):
        numbers = sorted(api.state.phone_numbers())[:4]
        ids = [api.state.get_id(n) for n in numbers]
        identity = TaskIdentity("bulk_dag", "manual__2026-01-01", "remove_stops", -1, 1)
        killed = ResultsTable(sqlite_conn, "removals", hash_key=resolve_hash_key(hash_key)).prepare(identity)
        now = pd.Timestamp("2026-01-02T03:04:05Z")
        killed.insert(
            [
                killed._row_tuple(i, _hmac(KEY, n), "k1", "pending", ids[i], None, None, None, now)
                for i, n in enumerate(numbers)
            ]
        )
        killed.close()
        for stop_id in ids[:2]:  # try 1's deletes that landed
            api.state.remove(stop_id)
        summary = _operator("remove", numbers, "removals", sqlite_conn, hash_key_conn_id=hash_key).execute(
            ti_context(2, task_id="remove_stops")
        )
        assert (summary["not_on_list"], summary["removed"]) == (2, 2)
        assert _rows(sqlite_conn, "removals")["status"].tolist() == [
            *["removed", "removed", "not_processed", "not_processed"],
            *["not_on_list", "not_on_list", "removed", "removed"],
        ]


class TestRefusedBeforeAnyCall:
    @pytest.mark.parametrize("kind", ["add", "remove"])
    @pytest.mark.parametrize("password", ["too-short", "x" * 31, ""], ids=["short", "31", "empty"])
    def test_short_key(self, monkeypatch, api, sqlite_conn, kind, password):
        conn_id = _use_key(monkeypatch, password)
        operator = _operator(kind, _new(api), "results", sqlite_conn, hash_key_conn_id=conn_id)
        with pytest.raises(SmsPartnerConfigError, match="at least 32 characters"):
            operator.execute(CONTEXT)
        assert api.stats.count() == 0
        assert not _has_table(sqlite_conn, "results")

    def test_missing_key_connection(self, api, sqlite_conn):
        operator = _operator("add", _new(api), "results", sqlite_conn, hash_key_conn_id="no_such_key")
        with pytest.raises(SmsPartnerConfigError, match=r"'no_such_key'.*not a defined"):
            operator.execute(CONTEXT)
        assert api.stats.count() == 0

    @pytest.mark.parametrize(
        ("first", "then", "match"),
        [
            (None, "hash_key", r"holds numbers in clear \(input_value, phone_e164\)"),
            ("hash_key", None, r"holds hashed numbers \(phone_hash\).*Set hash_key_conn_id"),
            ("hash_key", "new_key", r"hashed with key id\(s\) k1, not 'k2'"),
        ],
        ids=["clear-then-hashed", "hashed-then-clear", "other-key"],
    )
    def test_mode_or_key_mismatch(self, monkeypatch, api, results_db, hash_key, first, then, match):
        conn_id, table = results_db
        _use_key(monkeypatch, NEW_KEY, key_id="k2", conn_id="new_key")
        _operator("add", NEW[:2], table, conn_id, hash_key_conn_id=first).execute(ti_context(1))
        before = _rows(conn_id, table)
        api.reset_stats()
        with pytest.raises(ResultsTableError, match=match) as raised:
            _operator("add", NEW, table, conn_id, hash_key_conn_id=then).execute(ti_context(2))
        assert table in str(raised.value) and "choose another results_table" in str(raised.value)
        assert api.stats.count() == 0
        pd.testing.assert_frame_equal(_rows(conn_id, table), before)


# ------------------------------------------------------------------------------------- the scans
def _forms(value: Any) -> set[str]:
    """The forms an input could leak in: as sent, E.164 with and without the plus, ``00``-prefixed,
    national (``0612345678``) and grouped national (``06 12 34 56 78``); the ones with at least
    six digits (``junk`` is no number)."""
    import phonenumbers

    forms = {str(value)}
    if e164 := oracle_e164(value):
        number = phonenumbers.parse(e164)
        grouped = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        forms |= {e164, e164[1:], "00" + e164[1:], grouped, re.sub(r"\D", "", grouped)}
    return {form for form in forms if len(re.sub(r"\D", "", form)) >= 6}


def _leaks(text: str, values: list[Any]) -> list[str]:
    return sorted({form for value in values for form in _forms(value) if form in text})


def _echoing_add(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that quotes the number it rejects, in two forms, in its error message."""
    real_add = SmsPartnerHook.add_stop

    def add_stop(hook: SmsPartnerHook, phone: str) -> Any:
        try:
            return real_add(hook, phone)
        except InvalidPhoneNumberError as exc:
            quoted = f"Numéro {phone} invalide (0{phone[3:]})"
            raise InvalidPhoneNumberError(quoted, code=exc.code, http_status=exc.http_status) from None

    monkeypatch.setattr(SmsPartnerHook, "add_stop", add_stop)


def _run_both(
    monkeypatch: pytest.MonkeyPatch, api: Any, conn_id: str, table: str, key: str
) -> dict[str, Any]:
    """A hashed add (a rejected number quoted by the server), its retry, and a hashed remove:
    what they return, their lineage, and every input."""
    _echoing_add(monkeypatch)
    adds, removes = _inputs(api, "add"), _inputs(api, "remove")
    add = _operator("add", adds, table, conn_id, hash_key_conn_id=key)
    remove = _operator("remove", removes, f"{table}_r", conn_id, hash_key_conn_id=key)
    returned = [add.execute(ti_context(1)), add.execute(ti_context(2)), remove.execute(CONTEXT)]
    lineage = [repr(op.get_openlineage_facets_on_complete(None)) for op in (add, remove)]
    rows = _rows(conn_id, table)
    failed = rows[rows["status"] == "failed"]
    assert len(failed) == 2 and failed["error_message"].str.contains(re.escape(MASKED_NUMBER)).all()
    return {"xcom": json.dumps(returned), "lineage": "\n".join(lineage), "inputs": adds + removes}


def _captured(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    logs = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    logs += capsys.readouterr().out
    assert "failed: input row" in logs and "Summary:" in logs  # the task's lines were captured
    return logs


class TestNoNumberInClear:
    def test_sqlite_file_bytes_logs_xcom_and_lineage(
        self, monkeypatch, api, sqlite_conn, hash_key, caplog, capsys
    ):
        caplog.set_level(logging.INFO)
        found = _run_both(monkeypatch, api, sqlite_conn, "results", hash_key)
        path = Path(resolve_dbapi_hook(sqlite_conn).get_connection(sqlite_conn).host)
        content = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))
        assert _hmac(KEY, NEW[0]).encode() in content  # the scan reads the tables' bytes
        forms = {form for value in found["inputs"] for form in _forms(value)}
        assert sorted(form for form in forms if form.encode() in content) == []
        assert _leaks(_captured(caplog, capsys), found["inputs"]) == []
        assert _leaks(found["xcom"], found["inputs"]) == []
        assert _leaks(found["lineage"], found["inputs"]) == []

    @pytest.mark.parametrize("server", ["postgres", "mysql"])
    def test_every_text_column_logs_xcom_and_lineage(
        self, request, monkeypatch, api, hash_key, unique_table, caplog, capsys, server
    ):
        conn_id = request.getfixturevalue(f"{server}_conn")
        table = unique_table
        caplog.set_level(logging.INFO)
        try:
            found = _run_both(monkeypatch, api, conn_id, table, hash_key)
            text = _text_columns(conn_id, [table, f"{table}_r"])
        finally:
            drop_results(conn_id, table, f"{table}_r")
        assert _hmac(KEY, NEW[0]) in text
        assert _leaks(text, found["inputs"]) == []
        assert _leaks(_captured(caplog, capsys), found["inputs"]) == []
        assert _leaks(found["xcom"], found["inputs"]) == []
        assert _leaks(found["lineage"], found["inputs"]) == []

    def test_without_a_results_table(self, monkeypatch, api, hash_key, caplog, capsys):
        caplog.set_level(logging.INFO)
        _echoing_add(monkeypatch)
        values = _inputs(api, "add")
        operator = SmsPartnerAddStopsOperator(
            task_id="add_stops", phone_numbers=values, hash_key_conn_id=hash_key, max_failed=1
        )
        summary = operator.execute(CONTEXT)
        assert summary["failed"] == 1 and "results_table" not in summary
        assert _leaks(_captured(caplog, capsys) + json.dumps(summary), values) == []


def _text_columns(conn_id: str, tables: list[str]) -> str:
    """Every value of every text column of ``tables``, as text."""
    engine = sa.create_engine(resolve_dbapi_hook(conn_id).get_uri())
    values: list[str] = []
    try:
        with engine.connect() as conn:
            for name in tables:
                table = sa.Table(name, sa.MetaData(), autoload_with=conn)
                texts = [c for c in table.columns if isinstance(c.type, sa.String)]
                assert {c.name.lower() for c in texts} >= {"phone_hash", "error_message", "note"}
                values.extend(str(v) for row in conn.execute(sa.select(*texts)) for v in row)
    finally:
        engine.dispose()
    return "\n".join(values)


# ------------------------------------------------------------------------------------- the parts
class TestMaskNumber:
    @pytest.mark.parametrize(
        "message",
        [
            "Numéro +33612345678 invalide",
            "number 33612345678 refused",
            "0033612345678: bad",
            "national 0612345678",
            "grouped 06 12 34 56 78, or 06.12.34.56.78",
            "+33 (0)6 12 34 56 78",
        ],
    )
    def test_every_form_is_masked(self, message):
        masked = mask_number(message, "+33612345678")
        assert MASKED_NUMBER in masked
        assert _leaks(masked, ["+33612345678"]) == [] and "12345678" not in masked

    def test_other_digits_are_kept(self):
        message = "retry_after=7200s, retry after 2026-12-07T15:00:00Z (code 9, HTTP 200)"
        assert mask_number(message, "+33612345678") == message
        assert mask_number(None, "+33612345678") is None
        assert mask_number("+33612345678", None) == "+33612345678"


class TestEarlierNumbers:
    def test_hashes_become_numbers_and_unknown_ones_tokens(self):
        earlier = pd.DataFrame(
            {
                "try_number": [1, 1, 1],
                "input_row": [0, 1, 2],
                "phone_hash": pd.array([_hmac(KEY, NEW[0]), _hmac(KEY, NEW[1]), None], dtype="string"),
                "status": pd.array(["pending", "added", "pending"], dtype="string"),
                "stop_id": pd.array([None, 7, None], dtype="Int64"),
            }
        )
        frame = earlier_numbers(earlier, pd.Series([NEW[1], None, "+33612345678"]), KEY.encode())
        assert list(frame.columns) == ["try_number", "input_row", "phone_e164", "status", "stop_id"]
        phones = frame["phone_e164"].tolist()
        assert phones[1] == NEW[1] and pd.isna(phones[2])
        assert phones[0].startswith("phone_hash:") and NEW[0] not in phones[0]

    @pytest.mark.parametrize(("kind", "status"), [("add", "not_processed"), ("remove", "removed")])
    def test_an_unknown_hash_is_off_the_list(self, kind, status):
        """A pending number neither among the inputs nor on the list: an add did not land, a
        remove did."""
        earlier = pd.DataFrame(
            {
                "try_number": [1],
                "input_row": [0],
                "phone_hash": pd.array([_hmac(KEY, NEW[0])], dtype="string"),
                "status": pd.array(["pending"], dtype="string"),
                "stop_id": pd.array([5], dtype="Int64"),
            }
        )
        stop_list = pd.DataFrame({"phone_e164": ["+33612345678"], "stop_id": [1]})
        known = earlier_numbers(earlier, stop_list["phone_e164"], KEY.encode())
        recovery = recover_earlier(kind, known, stop_list, try_number=2)
        assert recovery.updates["status"].tolist() == [status]
