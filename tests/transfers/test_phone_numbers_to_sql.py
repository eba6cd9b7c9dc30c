"""PhoneNumbersToSqlOperator on real SQLite, PostgreSQL and MariaDB: a query's numbers, streamed
in chunks, normalised to E.164 and written to a keyed table."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

import airflow_provider_smspartner.phone_numbers as phone_numbers_module
from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.transfers.phone_numbers_to_sql import PhoneNumbersToSqlOperator
from benchmarks.phone_corpus import generate_corpus
from tests.helpers import oracle_e164

#: Numbers as people type them, in several regions and habits, and junk.
MESSY = (
    "06 12 34 56 78",
    "+33 (0)6 12 34 56 78",
    "0033612345678",
    "6.12.34.56.78",
    "+32 470 12 34 56",
    "0470 12 34 56",
    "+41 78 123 45 67",
    "+49 1512 3456789",
    "+44 7700 900123",
    "+1 (201) 555-0123",
    "+212 6 12 34 56 78",
    "+262 692 12 34 56",
    "nope",
    "",
    None,
    "12",
)


@pytest.fixture
def names(warehouse_conn: str) -> Iterator[tuple[str, str]]:
    """``(source table, destination table)``, unique; both (and any staging left) dropped after."""
    suffix = uuid.uuid4().hex[:10]
    source, destination = f"contacts_{suffix}", f"phones_{suffix}"
    yield source, destination
    engine = resolve_dbapi_hook(warehouse_conn).get_sqlalchemy_engine()
    try:
        with engine.begin() as conn:
            for name in sa.inspect(conn).get_table_names():
                if name.startswith((source, destination)):
                    sa.Table(name, sa.MetaData()).drop(conn)
    finally:
        engine.dispose()


def _source(conn_id: str, table: str, rows: list[tuple[Any, Any]], key: str = "contact_id") -> None:
    """Create ``table`` (``key``, ``phone``, ``region``) holding ``rows`` ``(key, phone)``."""
    engine = resolve_dbapi_hook(conn_id).get_sqlalchemy_engine()
    key_type = sa.BigInteger() if all(isinstance(r[0], int) for r in rows) else sa.String(40)
    contacts = sa.Table(
        table,
        sa.MetaData(),
        sa.Column(key, key_type, primary_key=False, autoincrement=False),
        sa.Column("phone", sa.Text()),
        sa.Column("region", sa.String(8)),
        mysql_charset="utf8mb4",
    )
    try:
        with engine.begin() as conn:
            contacts.drop(conn, checkfirst=True)
            contacts.create(conn)
            if rows:
                conn.execute(sa.insert(contacts), [{key: k, "phone": p, "region": "xx"} for k, p in rows])
    finally:
        engine.dispose()


def _table(conn_id: str, table: str) -> pd.DataFrame:
    engine = resolve_dbapi_hook(conn_id).get_sqlalchemy_engine()
    try:
        with engine.connect() as conn:
            frame = pd.read_sql(sa.text(f"SELECT * FROM {table}"), conn)
    finally:
        engine.dispose()
    return frame


def _phones(conn_id: str, table: str, key: str = "contact_id") -> dict[Any, str | None]:
    frame = _table(conn_id, table)
    return {
        (k.item() if hasattr(k, "item") else k): (None if pd.isna(v) else v)
        for k, v in zip(frame[key], frame["phone_e164"], strict=True)
    }


def _operator(conn_id: str, source: str, destination: str, **kwargs: Any) -> PhoneNumbersToSqlOperator:
    arguments: dict[str, Any] = {
        "sql": f"SELECT contact_id, phone, region FROM {source}",
        "key_column": "contact_id",
        "phone_column": "phone",
        "destination_table": destination,
        "chunk_size": 4,
    }
    return PhoneNumbersToSqlOperator(task_id="normalise", source_conn_id=conn_id, **(arguments | kwargs))


@pytest.fixture
def normalise_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch the operator normalises (it imports the function at run time)."""
    sizes: list[int] = []
    real = phone_numbers_module.normalize_phone_numbers

    def spy(values: Any, default_region: str = "FR") -> pd.DataFrame:
        sizes.append(len(values))
        return real(values, default_region=default_region)

    monkeypatch.setattr(phone_numbers_module, "normalize_phone_numbers", spy)
    return sizes


class TestWrites:
    def test_replace_normalises_messy_numbers(self, warehouse_conn, names):
        source, destination = names
        rows = list(enumerate(MESSY, start=1))
        _source(warehouse_conn, source, rows)
        result = _operator(warehouse_conn, source, destination).execute({})
        expected = {key: oracle_e164(value, "FR") for key, value in rows}
        valid = sum(v is not None for v in expected.values())
        assert result == {
            "rows": len(rows),
            "valid": valid,
            "invalid": len(rows) - valid,
            "table": destination,
            "mode": "replace",
        }
        assert _phones(warehouse_conn, destination) == expected
        assert expected[1] == expected[2] == expected[3] == "+33612345678"
        assert expected[5] == "+32470123456" and expected[6] == "+33470123456"  # national: read as French
        frame = _table(warehouse_conn, destination)
        assert [c.lower() for c in frame.columns] == ["contact_id", "phone_e164", "reason"]
        reasons = dict(zip(frame["contact_id"].astype(int), frame["reason"], strict=True))
        assert reasons[13] == "not_a_number" and reasons[15] == "empty" and pd.isna(reasons[1])

    def test_default_region_and_corpus(self, warehouse_conn, names):
        """A messy corpus (every habit, many regions, junk) judged exactly as libphonenumber."""
        source, destination = names
        corpus = generate_corpus(300, seed=5)
        texts = [None if pd.isna(v) else str(v).replace("\x00", "") for v in corpus]
        rows = [*enumerate(texts, start=1), *enumerate(MESSY, start=1001)]
        _source(warehouse_conn, source, rows)
        _operator(warehouse_conn, source, destination, default_region="BE", chunk_size=50).execute({})
        stored = _phones(warehouse_conn, destination)
        expected = {key: oracle_e164(value, "BE") for key, value in rows}
        assert stored == expected
        assert stored[1006] == "+32470123456"  # "0470 12 34 56" in Belgium
        assert sum(v is not None for v in expected.values()) > 100

    def test_upsert_keeps_absent_keys_and_updates_changed_ones(self, warehouse_conn, names):
        source, destination = names
        _source(warehouse_conn, source, [(1, "06 12 34 56 78"), (2, "nope"), (3, "+32 470 12 34 56")])
        _operator(warehouse_conn, source, destination, mode="upsert").execute({})
        _source(
            warehouse_conn, source, [(2, "07 81 23 45 67"), (3, "+32 470 12 34 56"), (4, "0033612345679")]
        )
        result = _operator(warehouse_conn, source, destination, mode="upsert").execute({})
        assert (result["rows"], result["valid"], result["invalid"], result["mode"]) == (3, 3, 0, "upsert")
        assert _phones(warehouse_conn, destination) == {
            1: "+33612345678",  # absent from the query: kept
            2: "+33781234567",  # changed: updated
            3: "+32470123456",
            4: "+33612345679",
        }

        replaced = _operator(warehouse_conn, source, destination).execute({})
        assert replaced["rows"] == 3
        assert sorted(_phones(warehouse_conn, destination)) == [2, 3, 4]  # replace: exactly the query

    def test_streams_in_chunks(self, warehouse_conn, names, normalise_calls):
        source, destination = names
        rows = [(i, f"06 12 34 {i // 100:02d} {i % 100:02d}") for i in range(1, 24)]
        _source(warehouse_conn, source, rows)
        result = _operator(warehouse_conn, source, destination, chunk_size=5).execute({})
        assert result["rows"] == result["valid"] == 23
        assert normalise_calls[0] == 0  # the region check, before any read
        assert normalise_calls[1:] == [5, 5, 5, 5, 3]  # more chunks than one, none above chunk_size
        assert len(_phones(warehouse_conn, destination)) == 23

    def test_text_key_keeps_its_name(self, warehouse_conn, names):
        source, destination = names
        _source(warehouse_conn, source, [("C-001", "0612345678"), ("C-002", "bad")], key="customer_ref")
        result = _operator(
            warehouse_conn,
            source,
            destination,
            key_column="customer_ref",
            sql=f"SELECT customer_ref, phone FROM {source}",
        ).execute({})
        assert (result["valid"], result["invalid"]) == (1, 1)
        frame = _table(warehouse_conn, destination)
        assert [c.lower() for c in frame.columns] == ["customer_ref", "phone_e164", "reason"]
        assert _phones(warehouse_conn, destination, "customer_ref") == {
            "C-001": "+33612345678",
            "C-002": None,
        }

    def test_sqlite_source_and_destination_in_one_file(self, sqlite_conn):
        """More rows than SQLite's page cache holds, read from the file the table is written to:
        the staging table lives in the writer's temporary database, so the load never waits for
        the reader's lock (it would wait for ever: the reader waits for the writer)."""
        rows = [
            (i, f"06 {i % 100:02d} {i // 100 % 100:02d} {i // 10000 % 100:02d} 1{i % 10}")
            for i in range(300_000)
        ]
        _source(sqlite_conn, "contacts", rows)
        result = _operator(sqlite_conn, "contacts", "phones", chunk_size=20_000).execute({})
        assert result["rows"] == 300_000
        assert len(_phones(sqlite_conn, "phones")) == 300_000

    def test_empty_result_creates_an_empty_table(self, warehouse_conn, names):
        source, destination = names
        _source(warehouse_conn, source, [])
        result = _operator(warehouse_conn, source, destination).execute({})
        assert (result["rows"], result["valid"], result["invalid"]) == (0, 0, 0)
        assert _table(warehouse_conn, destination).empty


class TestErrors:
    def test_a_repeated_key_is_named_and_nothing_changes(self, warehouse_conn, names):
        source, destination = names
        _source(warehouse_conn, source, [(1, "0612345678")])
        _operator(warehouse_conn, source, destination).execute({})
        # Repeated across chunks (chunk_size 2) and within one.
        _source(warehouse_conn, source, [(7, "0612345678"), (8, "x"), (9, "y"), (7, "z")])
        with pytest.raises(ValueError, match=r"'contact_id' repeats .*e\.g\. 7"):
            _operator(warehouse_conn, source, destination, chunk_size=2).execute({})
        with pytest.raises(ValueError, match=r"'contact_id' repeats .*e\.g\. 7"):
            _operator(warehouse_conn, source, destination, chunk_size=10).execute({})
        assert _phones(warehouse_conn, destination) == {1: "+33612345678"}

    def test_missing_columns_name_the_available_ones(self, warehouse_conn, names):
        source, destination = names
        _source(warehouse_conn, source, [(1, "0612345678")])
        with pytest.raises(
            ValueError, match=r"key_column 'id' is not a column .*\['contact_id', 'phone', 'region'\]"
        ):
            _operator(warehouse_conn, source, destination, key_column="id").execute({})
        operator = _operator(warehouse_conn, source, destination)
        operator.phone_column = "mobile"
        with pytest.raises(ValueError, match=r"phone_column 'mobile' is not a column .*available columns"):
            operator.execute({})

    def test_an_empty_key_is_refused(self, sqlite_conn):
        _source(sqlite_conn, "contacts", [(1, "0612345678")])
        operator = _operator(
            sqlite_conn, "contacts", "phones", sql="SELECT NULL AS contact_id, phone FROM contacts"
        )
        with pytest.raises(ValueError, match=r"key_column 'contact_id' is empty \(NULL\) in 1 row"):
            operator.execute({})

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"mode": "append"}, "mode must be one of replace, upsert; got 'append'"),
            ({"destination_table": "phones; DROP TABLE x"}, "Invalid table name"),
            ({"default_region": "XX"}, "XX"),
        ],
    )
    def test_bad_arguments_fail_before_any_read(self, sqlite_conn, changes, message, normalise_calls):
        operator = _operator(sqlite_conn, "missing_table", "phones", **changes)
        with pytest.raises(ValueError, match=message):
            operator.execute({})
        assert all(size == 0 for size in normalise_calls)  # at most the region check: no rows

    def test_bad_constructor_arguments(self):
        with pytest.raises(ValueError, match="clashes with a column the operator writes"):
            _operator("c", "s", "d", key_column="phone_e164")
        with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
            _operator("c", "s", "d", chunk_size=0)
        with pytest.raises(ValueError, match="key_column must be a column name"):
            _operator("c", "s", "d", key_column="")


class TestOperator:
    def test_template_fields_and_defaults(self):
        operator = _operator("src", "s", "d")
        assert tuple(operator.template_fields) == (
            "sql",
            "source_conn_id",
            "destination_conn_id",
            "destination_table",
            "mode",
            "hash_key_conn_id",
        )
        assert operator.destination_conn_id is None and operator.default_region == "FR"
        assert operator.hash_key_conn_id is None

    def test_another_destination_connection(self, sqlite_conn, postgres_conn):
        _source(sqlite_conn, "contacts", [(1, "06 12 34 56 78")])
        table = f"phones_{uuid.uuid4().hex[:10]}"
        try:
            _operator(sqlite_conn, "contacts", table, destination_conn_id=postgres_conn).execute({})
            assert _phones(postgres_conn, table) == {1: "+33612345678"}
        finally:
            resolve_dbapi_hook(postgres_conn).run(f"DROP TABLE IF EXISTS {table}")
