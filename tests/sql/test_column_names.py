"""Column names a database cannot store as given: refused before anything is written
(``check_column_names``, and ``SqlTableWriter`` through it) on SQLite, PostgreSQL and MariaDB;
legal but odd names written run after run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.sql.ddl import staging_name
from airflow_provider_smspartner.sql.names import TableName, check_column_names
from airflow_provider_smspartner.sql.tables import table_spec_for
from airflow_provider_smspartner.sql.writer import SqlTableWriter
from airflow_provider_smspartner.suppression.sinks import TableSink
from tests.helpers import drop_table

KEY = "phone_e164"
#: The fixture of each database's connection.
CONNECTIONS = {"postgresql": "postgres_conn", "mysql": "mysql_conn", "sqlite": "sqlite_conn"}
LONG_UTF8 = "é" * 32  # 32 characters, 64 bytes in UTF-8
#: (database, the audience's column names, what the refusal must say).
REFUSED = [
    ("postgresql", ("c" * 64,), r"64 bytes in UTF-8, over PostgreSQL's limit of 63"),
    ("postgresql", (LONG_UTF8,), r"64 bytes in UTF-8, over PostgreSQL's limit of 63"),
    ("postgresql", ("rate_%",), r"contains '%'"),
    ("postgresql", ("a\x00b",), r"contains a NUL character"),
    ("postgresql", ("",), r"is empty"),
    ("postgresql", ("x", "x"), r"'x' appears 2 times"),
    ("mysql", ("c" * 65,), r"65 characters, over MySQL/MariaDB's limit of 64"),
    ("mysql", ("a`b",), r"contains a backtick"),
    ("mysql", ("ab ",), r"ends with a space"),
    ("mysql", ("a\x00b",), r"contains a NUL character"),
    ("mysql", ("call \U0001f4de",), r"outside the Basic Multilingual Plane"),
    ("mysql", ("Phone", "phone"), r"'Phone' and 'phone' differ only in case.*MySQL/MariaDB"),
    ("mysql", ("É", "é"), r"'É' and 'é' differ only in case"),
    ("mysql", ("",), r"is empty"),
    ("sqlite", ("a\x00b",), r"contains a NUL character"),
    ("sqlite", ("Phone", "phone"), r"'Phone' and 'phone' differ only in case.*SQLite"),
    ("sqlite", ("",), r"is empty"),
]
REFUSED_IDS = [
    "pg-64-bytes",
    "pg-64-bytes-utf8",
    "pg-percent",
    "pg-nul",
    "pg-empty",
    "pg-repeated",
    "mysql-65-chars",
    "mysql-backtick",
    "mysql-trailing-space",
    "mysql-nul",
    "mysql-emoji",
    "mysql-case",
    "mysql-case-unicode",
    "mysql-empty",
    "sqlite-nul",
    "sqlite-case",
    "sqlite-empty",
]
#: (database, legal but odd column names that must work on every run).
ODD = [
    (
        "postgresql",
        (
            "a b",
            "it's",
            'say "hi"',
            "numéro",
            "c" * 63,
            "é" * 31 + "x",
            "Phone",
            "phone",
            "a`b",
            "☎ \U0001f4de",
        ),
    ),
    ("mysql", ("a b", "it's", 'say "hi"', "numéro", "é" * 64, " leading", "rate_%", "e", "ß", "SS")),
    ("sqlite", ("a b", "it's", 'say "hi"', "numéro", "x" * 300, "rate_%", "a`b", "É", "é", "\U0001f4de")),
]


def _audience(columns: tuple[str, ...]) -> pd.DataFrame:
    """Two rows keyed by ``phone_e164``, then one text column per name (repeats kept)."""
    values = [[f"+3361234567{row}", *(f"{row}:{i}" for i in range(len(columns)))] for row in range(2)]
    return pd.DataFrame(values, columns=[KEY, *columns])


def _writer(conn_id: str, table: str, frame: pd.DataFrame) -> SqlTableWriter:
    """A writer as the gate's ``TableSink`` makes one: the spec taken from the frame."""
    spec = table_spec_for(frame, key=KEY, indexes=(KEY,))
    return SqlTableWriter(resolve_dbapi_hook(conn_id), table, spec, chunk_size=1)


def _has_table(conn_id: str, table: str) -> bool:
    engine = resolve_dbapi_hook(conn_id).get_sqlalchemy_engine()
    try:
        return sa.inspect(engine).has_table(table)
    finally:
        engine.dispose()


@pytest.fixture
def connection(request: pytest.FixtureRequest) -> str:
    """The connection id of the test's ``database`` parameter."""
    return str(request.getfixturevalue(CONNECTIONS[request.node.callspec.params["database"]]))


@pytest.fixture
def table(connection: str) -> Iterator[str]:
    """A unique table name; it and its staging table are dropped afterwards."""
    name = f"colnames_{uuid.uuid4().hex[:10]}"
    yield name
    for created in (name, staging_name(TableName.parse(name)).name):
        drop_table(connection, created)


class TestCheckColumnNames:
    @pytest.mark.parametrize(("database", "columns", "rule"), REFUSED, ids=REFUSED_IDS)
    def test_refused_with_the_rule(self, database, columns, rule):
        with pytest.raises(ValueError, match=rule) as raised:
            check_column_names([KEY, *columns], database)
        message = str(raised.value)
        assert repr(columns[0]) in message
        assert {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite"}[database] in message
        assert "AS" in message and "nothing was written" in message

    @pytest.mark.parametrize(("database", "columns"), ODD, ids=[database for database, _ in ODD])
    def test_odd_but_legal_names_pass(self, database, columns):
        check_column_names([KEY, *columns], database)

    def test_mariadb_is_mysql(self):
        with pytest.raises(ValueError, match="backtick"):
            check_column_names(["a`b"], "mariadb")

    def test_every_problem_in_one_message_with_the_table(self):
        with pytest.raises(ValueError) as raised:
            check_column_names(["ok", "a`b", "x" * 70, "Id", "ID"], "mysql", table="audience_out")
        message = str(raised.value)
        assert "table audience_out" in message
        assert "'a`b' contains a backtick" in message
        assert "70 characters" in message
        assert "'Id' and 'ID' differ only in case" in message
        assert "'ok'" not in message

    def test_another_database_gets_the_rules_every_database_shares(self):
        check_column_names(["a`b", "x" * 200, "Id", "ID", "rate_%"], "mssql")
        with pytest.raises(ValueError, match=r"mssql cannot store as given: 'x' appears 2 times"):
            check_column_names(["x", "x"], "mssql")
        with pytest.raises(ValueError, match="NUL"):
            check_column_names(["a\x00"], "mssql")


class TestWriterRefusesBadNames:
    @pytest.mark.parametrize(("database", "columns", "rule"), REFUSED, ids=REFUSED_IDS)
    def test_no_table_is_created(self, database, connection, table, columns, rule):
        frame = _audience(columns)
        for _ in range(2):  # each run: refused the same way, nothing created
            with pytest.raises(ValueError, match=rule):
                _writer(connection, table, frame).write_chunks([frame], "replace")
            assert not _has_table(connection, table)

    @pytest.mark.parametrize(("database", "columns", "rule"), REFUSED, ids=REFUSED_IDS)
    def test_an_existing_table_stays_intact(self, database, connection, table, columns, rule):
        before = _audience(("segment",))
        first = _writer(connection, table, before)
        first.write_chunks([before], "replace")
        frame = _audience(("segment", *columns))
        for write in (
            lambda writer: writer.write_chunks([frame], "replace"),
            lambda writer: writer.write(frame, "replace"),
        ):
            with pytest.raises(ValueError, match=rule):
                write(_writer(connection, table, frame))
        after = first.read_frame()
        assert list(after.columns) == [KEY, "segment"]
        assert after.sort_values(KEY).to_dict("records") == before.to_dict("records")
        assert not _has_table(connection, staging_name(TableName.parse(table)).name)

    @pytest.mark.parametrize(
        ("database", "columns", "rule"),
        [REFUSED[2], REFUSED[7], REFUSED[15]],
        ids=[REFUSED_IDS[2], REFUSED_IDS[7], REFUSED_IDS[15]],
    )
    def test_the_gates_table_sink_refuses_on_its_first_chunk(
        self, database, connection, table, columns, rule
    ):
        sink = TableSink(connection, table, key=KEY, spill=False)
        try:
            with pytest.raises(ValueError, match=rule):
                sink.write(_audience(columns))
        finally:
            sink.abort()  # a writer thread that started would hold the table
        assert not _has_table(connection, table)


class TestOddNamesWorkEveryRun:
    @pytest.mark.parametrize(("database", "columns"), ODD, ids=[database for database, _ in ODD])
    @pytest.mark.parametrize("how", ["write_chunks", "write"])
    def test_written_and_read_back_twice(self, database, connection, table, columns, how):
        for run in range(2):
            frame = _audience(columns).assign(**{columns[0]: [f"run {run}", None]})
            writer = _writer(connection, table, frame)
            summary: Any = (
                writer.write_chunks([frame], "replace")
                if how == "write_chunks"
                else writer.write(frame, "replace")
            )
            assert summary.created_table == (run == 0)
            back = writer.read_frame().sort_values(KEY).reset_index(drop=True)
            assert list(back.columns) == [KEY, *columns]
            assert back.astype(object).where(back.notna(), None).values.tolist() == (
                frame.astype(object).where(frame.notna(), None).values.tolist()
            )
