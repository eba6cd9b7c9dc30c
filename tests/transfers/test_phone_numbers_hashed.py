"""Keyed-hash mode (``hash_key_conn_id``) of PhoneNumbersToSqlOperator on real SQLite, PostgreSQL and
MariaDB: contacts hashed as the extract hashes the stop list, joined on ``phone_hash``; no contact
number written in clear, and a table of the other mode or key refused before the query runs."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import phonenumbers
import pytest

from airflow_provider_smspartner.exceptions import SmsPartnerConfigError
from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.transfers.phone_numbers_to_sql import PhoneNumbersToSqlOperator
from benchmarks.phone_corpus import generate_corpus
from tests.helpers import drop_table, national, oracle_e164, query_frame
from tests.transfers.test_hashed_extract import KEY, NEW_KEY, _extract, _hmac, _text_columns, _use_key
from tests.transfers.test_phone_numbers_to_sql import MESSY, _operator, _source

HASHED_COLUMNS = ["contact_id", "phone_hash", "hash_key_id", "reason"]
#: A query that fails if it runs: a refusal that comes first proves the query never ran.
NO_QUERY = "SELECT contact_id, phone FROM no_such_table_anywhere"


@pytest.fixture
def hash_key(monkeypatch: pytest.MonkeyPatch) -> str:
    return _use_key(monkeypatch, KEY)


@pytest.fixture
def new_key(monkeypatch: pytest.MonkeyPatch) -> str:
    return _use_key(monkeypatch, NEW_KEY, key_id="k2", conn_id="new_key")


@pytest.fixture
def tables(warehouse_conn: str) -> Iterator[dict[str, str]]:
    """Unique names: the contacts (source), their hashed table and a hashed stop list; dropped after."""
    suffix = uuid.uuid4().hex[:10]
    names = {"source": f"contacts_{suffix}", "hashed": f"hashed_{suffix}", "stops": f"stops_{suffix}"}
    yield names
    for table in [*names.values(), f"{names['stops']}_runs"]:
        drop_table(warehouse_conn, table)


def _hash(conn_id: str, source: str, destination: str, **kwargs: Any) -> dict[str, Any]:
    """Run the operator in keyed-hash mode (``hash_key`` unless given) and return its summary."""
    arguments = {"hash_key_conn_id": "hash_key", **kwargs}
    return _operator(conn_id, source, destination, **arguments).execute({})


def _hashes(conn_id: str, table: str) -> dict[int, str | None]:
    frame = query_frame(conn_id, f"SELECT contact_id, phone_hash FROM {table}")
    return {
        int(k): (None if pd.isna(h) else h)
        for k, h in zip(frame["contact_id"], frame["phone_hash"], strict=True)
    }


def _expected(rows: list[tuple[int, Any]], key: str, region: str = "FR") -> dict[int, str | None]:
    """hmac.new(key, e164.encode(), sha256).hexdigest() of libphonenumber's E.164, per contact."""
    expected = {}
    for contact_id, value in rows:
        e164 = oracle_e164(value, region)
        expected[contact_id] = None if e164 is None else _hmac(key, e164)
    return expected


def _corpus(size: int = 300) -> list[tuple[int, Any]]:
    """A messy contact corpus (every habit, many regions, junk) and the hand-written messy numbers."""
    texts = [None if pd.isna(v) else str(v).replace("\x00", "") for v in generate_corpus(size, seed=11)]
    return [*enumerate(texts, start=1), *enumerate(MESSY, start=10_001)]


class TestHashedContacts:
    def test_hashes_are_hmac_of_the_e164_numbers(self, warehouse_conn, tables, hash_key):
        rows = _corpus()
        _source(warehouse_conn, tables["source"], rows)
        result = _hash(warehouse_conn, tables["source"], tables["hashed"], chunk_size=50)
        expected = _expected(rows, KEY)
        valid = sum(h is not None for h in expected.values())
        assert result == {
            "rows": len(rows),
            "valid": valid,
            "invalid": len(rows) - valid,
            "table": tables["hashed"],
            "mode": "replace",
            "hash_key_id": "k1",
        }
        assert valid > 100 and len(rows) - valid > 10
        assert _hashes(warehouse_conn, tables["hashed"]) == expected
        frame = query_frame(warehouse_conn, f"SELECT * FROM {tables['hashed']}")
        assert list(frame.columns) == HASHED_COLUMNS  # no phone_e164, no input
        assert set(frame["hash_key_id"]) == {"k1"}
        assert (frame["phone_hash"].isna() == frame["reason"].notna()).all()
        # The same number however typed: one hash.
        assert expected[10_001] == expected[10_002] == expected[10_003] == _hmac(KEY, "+33612345678")

    def test_joins_the_hashed_stop_list(self, smspartner_conn, sandbox, warehouse_conn, tables, hash_key):
        """The extract and the operator under one key: an equality on phone_hash finds exactly the
        contacts whose numbers are on the list, however they were typed."""
        listed = [phone for _, phone, _ in sandbox.state.list_entries()]
        rows: list[tuple[int, Any]] = []
        for i, e164 in enumerate(listed):  # each listed number typed three ways
            rows += [(100 + i, national(e164)), (200 + i, "0033" + e164[3:]), (300 + i, e164)]
        rows += [(400 + i, national(f"+3378123450{i}")) for i in range(5)]  # not on the list
        rows += [(500, "nope"), (501, None), (502, "+32 470 12 34 56")]
        _source(warehouse_conn, tables["source"], rows)
        stops = tables["stops"]
        _extract(warehouse_conn, stops, "upsert", hash_key_conn_id=hash_key).execute({})
        sandbox.state.remove(sandbox.state.list_entries()[0][0])  # left the list: removed_at set
        _extract(warehouse_conn, stops, "upsert", hash_key_conn_id=hash_key).execute({})
        _hash(warehouse_conn, tables["source"], tables["hashed"])

        stopped = query_frame(
            warehouse_conn,
            f"SELECT c.contact_id FROM {tables['hashed']} c JOIN {stops} s ON s.phone_hash = c.phone_hash "
            "WHERE s.removed_at IS NULL",
        )
        on_list = {key for key, value in rows if oracle_e164(value) in listed[1:]}
        assert set(stopped["contact_id"].astype(int)) == on_list
        assert len(on_list) == 12 and len(stopped) == 12
        # The documented query (docs/privacy.md): the contacts not on the list.
        kept = query_frame(
            warehouse_conn,
            f"SELECT c.contact_id FROM {tables['hashed']} c WHERE NOT EXISTS (SELECT 1 FROM {stops} s "
            "WHERE s.phone_hash = c.phone_hash AND s.removed_at IS NULL)",
        )
        assert set(kept["contact_id"].astype(int)) == {key for key, _ in rows} - on_list

    def test_upsert_then_replace(self, warehouse_conn, tables, hash_key):
        source, hashed = tables["source"], tables["hashed"]
        _source(warehouse_conn, source, [(1, "06 12 34 56 78"), (2, "nope"), (3, "+32 470 12 34 56")])
        _hash(warehouse_conn, source, hashed, mode="upsert")
        rows = [(2, "07 81 23 45 67"), (3, "+32 470 12 34 56"), (4, "0033612345679")]
        _source(warehouse_conn, source, rows)
        result = _hash(warehouse_conn, source, hashed, mode="upsert")
        assert (result["rows"], result["valid"], result["invalid"]) == (3, 3, 0)
        assert _hashes(warehouse_conn, hashed) == {1: _hmac(KEY, "+33612345678"), **_expected(rows, KEY)}
        _hash(warehouse_conn, source, hashed)
        assert _hashes(warehouse_conn, hashed) == _expected(rows, KEY)  # replace: exactly the query

    def test_lineage_lists_the_hashed_columns(self, sqlite_conn, hash_key):
        _source(sqlite_conn, "contacts", [(1, "0612345678")])
        operator = _operator(sqlite_conn, "contacts", "hashed", hash_key_conn_id=hash_key)
        operator.execute({})
        lineage = operator.get_openlineage_facets_on_complete(None)
        assert [f.name for f in lineage.outputs[0].facets["schema"].fields] == HASHED_COLUMNS

    def test_templated(self):
        assert "hash_key_conn_id" in PhoneNumbersToSqlOperator.template_fields


class TestRefusals:
    def test_clear_table_refuses_a_hashed_run(self, warehouse_conn, tables, hash_key):
        _source(warehouse_conn, tables["source"], [(1, "0612345678")])
        _operator(warehouse_conn, tables["source"], tables["hashed"]).execute({})
        with pytest.raises(SmsPartnerConfigError, match=r"in clear \(phone_e164\).*'hash_key'.*Nothing was"):
            _hash(warehouse_conn, tables["source"], tables["hashed"], sql=NO_QUERY)
        frame = query_frame(warehouse_conn, f"SELECT * FROM {tables['hashed']}")
        assert frame["phone_e164"].tolist() == ["+33612345678"] and "phone_hash" not in frame

    def test_hashed_table_refuses_a_clear_run(self, warehouse_conn, tables, hash_key):
        _source(warehouse_conn, tables["source"], [(1, "0612345678")])
        _hash(warehouse_conn, tables["source"], tables["hashed"])
        with pytest.raises(SmsPartnerConfigError, match=r"hashed numbers \(phone_hash\).*hash_key_conn_id"):
            _operator(warehouse_conn, tables["source"], tables["hashed"], sql=NO_QUERY).execute({})
        assert _hashes(warehouse_conn, tables["hashed"]) == {1: _hmac(KEY, "+33612345678")}

    def test_upsert_under_another_key_is_refused(self, warehouse_conn, tables, hash_key, new_key):
        _source(warehouse_conn, tables["source"], [(1, "0612345678"), (2, "x")])
        _hash(warehouse_conn, tables["source"], tables["hashed"], mode="upsert")
        with pytest.raises(
            SmsPartnerConfigError, match=r"hashed with key id\(s\) k1, not 'k2'.*mode='replace'"
        ):
            _hash(
                warehouse_conn,
                tables["source"],
                tables["hashed"],
                mode="upsert",
                hash_key_conn_id=new_key,
                sql=NO_QUERY,
            )
        frame = query_frame(warehouse_conn, f"SELECT * FROM {tables['hashed']}")
        assert set(frame["hash_key_id"]) == {"k1"}
        assert _hashes(warehouse_conn, tables["hashed"]) == {1: _hmac(KEY, "+33612345678"), 2: None}

    def test_replace_rebuilds_under_the_new_key(self, warehouse_conn, tables, hash_key, new_key, capsys):
        source, hashed = tables["source"], tables["hashed"]
        rows = [(1, "0612345678"), (2, "x"), (3, "+41 78 123 45 67")]
        _source(warehouse_conn, source, rows)
        _hash(warehouse_conn, source, hashed, mode="upsert")
        # A replace under the new key that fails (a repeated key) leaves the table as it was.
        _source(warehouse_conn, source, [*rows, (1, "0699999999")])
        with pytest.raises(ValueError, match="'contact_id' repeats"):
            _hash(warehouse_conn, source, hashed, hash_key_conn_id=new_key)
        assert _hashes(warehouse_conn, hashed) == _expected(rows, KEY)
        _source(warehouse_conn, source, rows)
        capsys.readouterr()
        result = _hash(warehouse_conn, source, hashed, hash_key_conn_id=new_key)
        assert result["hash_key_id"] == "k2"
        logs = capsys.readouterr().out  # the task's log
        assert "Key rotation" in logs and "key id(s) k1" in logs
        assert _hashes(warehouse_conn, hashed) == _expected(rows, NEW_KEY)
        keys = query_frame(warehouse_conn, f"SELECT DISTINCT hash_key_id FROM {hashed}")
        assert keys["hash_key_id"].tolist() == ["k2"]
        _hash(warehouse_conn, source, hashed, mode="upsert", hash_key_conn_id=new_key)  # goes on under k2

    @pytest.mark.parametrize(
        ("password", "message"),
        [
            ("too-short", "at least 32 characters long; it is shorter"),
            (None, "not a defined Airflow connection"),
        ],
        ids=["short", "missing"],
    )
    def test_bad_key_is_refused_before_the_query(self, monkeypatch, sqlite_conn, password, message):
        conn_id = "short_key" if password is None else _use_key(monkeypatch, password, conn_id="short_key")
        with pytest.raises(
            SmsPartnerConfigError, match=rf"Connection 'short_key' \(hash_key_conn_id\).*{message}"
        ):
            _hash(sqlite_conn, "contacts", "hashed", sql=NO_QUERY, hash_key_conn_id=conn_id)
        assert query_frame(sqlite_conn, "SELECT name FROM sqlite_master").empty  # nothing written

    @pytest.mark.parametrize("name", ["phone_hash", "hash_key_id", "PHONE_HASH"])
    def test_reserved_key_column(self, name):
        with pytest.raises(ValueError, match="clashes with a column the operator writes"):
            _operator("c", "s", "d", key_column=name, hash_key_conn_id="hash_key")


def _forms(value: Any) -> list[str]:
    """The forms a contact's number could leak in: as typed (when it holds 6 digits or more),
    E.164 (with and without the plus), national (digits only, and as libphonenumber groups it).
    Forms under 8 characters are left out: they could turn up by chance (in a hex hash, a
    timestamp)."""
    e164 = oracle_e164(value)
    typed = "" if value is None else str(value)
    forms = [typed] if sum(c.isdigit() for c in typed) >= 6 else []
    if e164 is not None:
        grouped = phonenumbers.format_number(
            phonenumbers.parse(e164), phonenumbers.PhoneNumberFormat.NATIONAL
        )
        forms += [e164, e164[1:], grouped, "".join(c for c in grouped if c.isdigit())]
    return [form for form in forms if len(form) >= 8]


def _leaks(text: str, rows: list[tuple[int, Any]]) -> list[str]:
    return [form for _, value in rows for form in _forms(value) if form in text]


class TestNoNumberInClear:
    def _run_every_mode(
        self, source_conn: str, conn_id: str, tables: dict[str, str], source: str
    ) -> list[tuple[int, Any]]:
        """Contacts (the listed numbers among them) hashed by replace, upsert and replace again into
        ``conn_id``, next to the hashed stop list. Returns every contact written."""
        rows = [*_corpus(120), (20_001, "0612961789"), (20_002, "+33 6 50 49 32 67")]
        _source(source_conn, source, rows)
        _extract(conn_id, tables["stops"], "upsert", hash_key_conn_id="hash_key").execute({})
        hashed = tables["hashed"]
        _hash(source_conn, source, hashed, destination_conn_id=conn_id, chunk_size=40)
        _source(
            source_conn,
            source,
            [(key, national("+33781234567") if key == 1 else value) for key, value in rows],
        )
        _hash(source_conn, source, hashed, destination_conn_id=conn_id, mode="upsert", chunk_size=40)
        _hash(source_conn, source, hashed, destination_conn_id=conn_id, chunk_size=40)
        return [*rows, (1, national("+33781234567"))]

    def test_sqlite_file_bytes_and_logs(
        self, monkeypatch, tmp_path, smspartner_conn, sandbox, sqlite_conn, hash_key, caplog, capsys
    ):
        # The contacts live in a database file of their own: the scan reads the destination's.
        monkeypatch.setenv(
            "AIRFLOW_CONN_CONTACTS_SQLITE",
            json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "contacts.db")}),
        )
        caplog.set_level(logging.INFO)
        tables = {"hashed": "contacts_hashed", "stops": "stops_hashed"}
        rows = self._run_every_mode("contacts_sqlite", sqlite_conn, tables, "contacts")
        path = Path(resolve_dbapi_hook(sqlite_conn).get_connection(sqlite_conn).host)
        content = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))
        assert _hmac(KEY, "+33612961789").encode() in content  # the scan reads the tables' bytes
        assert [form for _, v in rows for form in _forms(v) if form.encode() in content] == []
        logs = caplog.text + capsys.readouterr().out
        assert _leaks(logs, rows) == []
        assert "keyed hash, key id k1" in logs  # the task's log lines were captured

    @pytest.mark.parametrize("server", ["postgres", "mysql"])
    def test_every_text_column_and_logs(
        self, request, smspartner_conn, sandbox, hash_key, caplog, capsys, server
    ):
        conn_id = request.getfixturevalue(f"{server}_conn")
        suffix = uuid.uuid4().hex[:10]
        tables = {"hashed": f"hashed_{suffix}", "stops": f"stops_{suffix}"}
        source = f"contacts_{suffix}"
        caplog.set_level(logging.INFO)
        try:
            rows = self._run_every_mode(conn_id, conn_id, tables, source)
            text = _text_columns(conn_id, [tables["hashed"], tables["stops"], f"{tables['stops']}_runs"])
        finally:
            for table in [source, *tables.values(), f"{tables['stops']}_runs"]:
                drop_table(conn_id, table)
        assert _hmac(KEY, "+33612961789") in text
        assert _leaks(text, rows) == []
        logs = caplog.text + capsys.readouterr().out
        assert _leaks(logs, rows) == []
        assert "keyed hash, key id k1" in logs
