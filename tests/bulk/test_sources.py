"""Tests of bulk.sources: reading phone numbers from values, SQL and files."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pandas as pd
import pytest

from airflow_provider_smspartner.bulk.sources import PhoneSource, pick_column, values_from_object

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class TestSources:
    @pytest.mark.parametrize(
        ("value", "column", "expected"),
        [
            (["0612345678", 612345679, None], None, ["0612345678", 612345679, None]),
            (("a", "b"), None, ["a", "b"]),
            (pd.DataFrame({"id": [1, 2], "phone": ["x", "y"]}), "phone", ["x", "y"]),
            (pd.DataFrame({"tel": ["x"]}, index=[7]), None, ["x"]),
            ([{"id": 1, "phone": "x"}, {"id": 2}], "phone", ["x", None]),
            ([{"Phone": "x"}], "phone", ["x"]),
            (pd.Series(["x", "y"], index=[5, 9]), None, ["x", "y"]),
        ],
        ids=["list", "tuple", "dataframe", "one-column-frame", "dicts", "case-folded-key", "series"],
    )
    def test_values_from_object(self, value, column, expected):
        values = values_from_object(value, column)
        assert values.tolist() == expected
        assert list(values.index) == list(range(len(expected)))

    @pytest.mark.parametrize(
        ("value", "column", "match"),
        [
            ("0612345678", None, "single string"),
            ({"phone": ["x"]}, None, "is a dict"),
            ([["a"], ["b"]], None, r"phone_numbers\[0\] is a list.*expand"),
            ([{"phone": "x"}, "y"], "phone", "mixes dicts and plain values"),
            (
                pd.DataFrame({"id": [1], "phone": ["x"]}),
                None,
                r"2 columns \['id', 'phone'\].*set phone_column",
            ),
            (
                pd.DataFrame({"id": [1], "phone": ["x"]}),
                "mobile",
                r"'mobile' is not a column.*\['id', 'phone'\]",
            ),
            ([{"id": 1, "tel": "x"}], "phone", r"'phone' is not a column.*\['id', 'tel'\]"),
            (42, None, "must be a list"),
        ],
        ids=[
            "string",
            "dict",
            "nested-lists",
            "mixed",
            "ambiguous",
            "unknown-column",
            "unknown-key",
            "scalar",
        ],
    )
    def test_values_from_object_refuses(self, value, column, match):
        with pytest.raises(ValueError, match=match):
            values_from_object(value, column)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({}, "got none"),
            ({"phone_numbers": [], "sql": "SELECT 1", "sql_conn_id": "db"}, "got phone_numbers and sql"),
            ({"sql": "SELECT 1"}, "sql needs sql_conn_id"),
        ],
        ids=["none", "two", "sql-without-connection"],
    )
    def test_check_refuses(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            PhoneSource(**kwargs).check()

    def test_pick_column_without_columns(self):
        with pytest.raises(ValueError, match="has no columns"):
            pick_column([], None, "the query result")


class TestPhoneColumn:
    """``PhoneSource.read``: the phone column alone, in order, whatever the source."""

    FRAME = pd.DataFrame({"id": range(1, 8), "phone": ["0612", "+336", "", "x", "0751", "1", "2"]})

    @pytest.mark.parametrize("name", ["rows.parquet", "rows.csv", "rows.csv.gz"])
    def test_file(self, tmp_path, name):
        path = tmp_path / name
        if name.endswith(".parquet"):
            self.FRAME.to_parquet(path, index=False)
        else:
            self.FRAME.to_csv(path, index=False)
        values = PhoneSource(source_path=str(path), phone_column="PHONE").read(chunk_size=3)
        assert values.tolist() == self.FRAME["phone"].tolist()  # CSV: the empty cell stays ""
        assert list(values.index) == list(range(7))

    def test_an_empty_file_gives_no_values(self, tmp_path):
        path = tmp_path / "empty.csv"
        path.write_text("id,phone\n")
        values = PhoneSource(source_path=str(path), phone_column="phone").read()
        assert values.empty and values.dtype == object

    def test_sql_on_every_warehouse(self, warehouse_conn):
        from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook

        table = f"audience_{uuid.uuid4().hex[:8]}"
        hook = resolve_dbapi_hook(warehouse_conn)
        hook.run(f"CREATE TABLE {table} (id INTEGER, phone VARCHAR(20))", autocommit=True)
        try:
            hook.insert_rows(table, list(self.FRAME.itertuples(index=False, name=None)))
            source = PhoneSource(
                sql=f"SELECT id, phone FROM {table} ORDER BY id",
                sql_conn_id=warehouse_conn,
                phone_column="phone",
            )
            values = source.read(chunk_size=3)
        finally:
            hook.run(f"DROP TABLE {table}", autocommit=True)
        assert values.tolist() == self.FRAME["phone"].tolist()
        assert values.dtype == object and list(values.index) == list(range(7))


class TestRowChunks:
    """Whole rows, streamed in chunks (the suppression operator's audience)."""

    FRAME = pd.DataFrame(
        {
            "id": range(1, 8),
            "phone": ["0612345678", "+33612345679", "", "x", "0751234567", "1", "2"],
            "zip": ["01000"] * 7,
        }
    )

    @staticmethod
    def _read(source: PhoneSource, chunk_size: int) -> tuple[str, list[str], list[pd.DataFrame]]:
        with source.open_rows(chunk_size) as rows:
            return rows.column, rows.columns, list(rows.chunks)

    @pytest.mark.parametrize("name", ["rows.parquet", "rows.csv", "rows.csv.gz"])
    def test_file_in_chunks_keeps_every_column(self, tmp_path, name):
        path = tmp_path / name
        if name.endswith(".parquet"):
            self.FRAME.to_parquet(path, index=False)
        else:
            self.FRAME.to_csv(path, index=False)
        column, columns, chunks = self._read(PhoneSource(source_path=str(path), phone_column="PHONE"), 3)
        assert (column, columns) == ("phone", ["id", "phone", "zip"])
        assert [len(c) for c in chunks] == [3, 3, 1]
        assert all(list(c.index) == list(range(len(c))) for c in chunks)
        whole = pd.concat(chunks, ignore_index=True)
        assert whole["phone"].tolist() == self.FRAME["phone"].tolist()
        assert whole["zip"].tolist() == ["01000"] * 7  # CSV cells as text: the leading zero stays
        assert whole["id"].astype(int).tolist() == list(range(1, 8))

    def test_sql_in_chunks(self, sqlite_conn):
        from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook

        hook = resolve_dbapi_hook(sqlite_conn)
        hook.run("CREATE TABLE audience (id INTEGER, phone TEXT, zip TEXT)")
        hook.insert_rows("audience", list(self.FRAME.itertuples(index=False, name=None)))
        source = PhoneSource(
            sql="SELECT * FROM audience ORDER BY id", sql_conn_id=sqlite_conn, phone_column="phone"
        )
        column, columns, chunks = self._read(source, 4)
        assert (column, columns) == ("phone", ["id", "phone", "zip"])
        assert [len(c) for c in chunks] == [4, 3]
        assert pd.concat(chunks, ignore_index=True)["phone"].tolist() == self.FRAME["phone"].tolist()

    def test_empty_sources_yield_one_empty_chunk_with_the_columns(self, tmp_path, sqlite_conn):
        from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook

        path = tmp_path / "empty.csv"
        path.write_text("id,phone\n")
        hook = resolve_dbapi_hook(sqlite_conn)
        hook.run("CREATE TABLE nobody (id INTEGER, phone TEXT)")
        for source in (
            PhoneSource(source_path=str(path), phone_column="phone"),
            PhoneSource(sql="SELECT id, phone FROM nobody", sql_conn_id=sqlite_conn, phone_column="phone"),
            PhoneSource(phone_numbers=[]),
        ):
            _, columns, chunks = self._read(source, 10)
            assert len(chunks) == 1 and chunks[0].empty
            assert list(chunks[0].columns) == columns

    @pytest.mark.parametrize(
        ("value", "column", "expected_column", "expected_columns"),
        [
            (["06", 6, None], None, "phone_number", ["phone_number"]),
            (pd.Series(["06"], name="tel"), None, "tel", ["tel"]),
            (pd.DataFrame({"id": [1], "Phone": ["06"]}), "phone", "Phone", ["id", "Phone"]),
            (
                [{"id": 1, "phone": "06"}, {"phone": "07", "extra": True}],
                "phone",
                "phone",
                ["id", "phone", "extra"],
            ),
        ],
        ids=["list", "named-series", "case-folded", "dicts"],
    )
    def test_objects(self, value, column, expected_column, expected_columns):
        got_column, columns, chunks = self._read(PhoneSource(phone_numbers=value, phone_column=column), 2)
        assert (got_column, columns) == (expected_column, expected_columns)
        assert sum(len(c) for c in chunks) == len(value)

    @pytest.mark.parametrize(
        ("source", "match"),
        [
            (
                PhoneSource(phone_numbers=pd.DataFrame([[1, "a"]], columns=["x", "x"]), phone_column="x"),
                "repeated column",
            ),
            (PhoneSource(phone_numbers=pd.DataFrame({"id": [1], "tel": ["a"]})), "set phone_column"),
            (PhoneSource(phone_numbers="0612345678"), "single string"),
        ],
        ids=["repeated", "ambiguous", "string"],
    )
    def test_refuses(self, source, match):
        with pytest.raises(ValueError, match=match):
            self._read(source, 10)

    def test_unknown_file_column_fails_on_opening(self, tmp_path):
        path = tmp_path / "rows.parquet"
        self.FRAME.to_parquet(path, index=False)
        with pytest.raises(ValueError, match=r"'mobile' is not a column.*\['id', 'phone', 'zip'\]"):
            self._read(PhoneSource(source_path=str(path), phone_column="mobile"), 10)
