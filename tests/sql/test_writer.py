"""SqlTableWriter on real SQLite, PostgreSQL and MariaDB, and on the generic (insert_rows) path."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from airflow.providers.sqlite.hooks.sqlite import SqliteHook

from airflow_provider_smspartner.sql.apply import RemovalCounts, WriteSummary, chain_before_commit
from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.sql.ddl import staging_name
from airflow_provider_smspartner.sql.names import TableName
from airflow_provider_smspartner.sql.tables import Column, TableSpec, table_spec_for
from airflow_provider_smspartner.sql.writer import SqlTableWriter

SPEC = TableSpec(
    columns=(
        Column("id", "bigint", nullable=False),
        Column("name", "short_text"),
        Column("note", "text"),
        Column("seen_at", "timestamp"),
        Column("removed_at", "timestamp"),
    ),
    key="id",
    indexes=("name",),
    compared=("name", "note", "seen_at"),
    soft_delete="removed_at",
)
T0 = datetime(2024, 3, 1, 12, 30, 15, tzinfo=timezone.utc)
NOW = datetime(2024, 6, 1, 8, 0, 0, tzinfo=timezone.utc)


def _frame(*rows: tuple[int, str]) -> pd.DataFrame:
    """Rows ``(id, name)``; ``seen_at`` is T0 + id seconds, ``removed_at`` empty."""
    frame = pd.DataFrame({"id": [r[0] for r in rows], "name": [r[1] for r in rows]})
    frame["note"] = [f"note {name}" for name in frame["name"]]
    frame["seen_at"] = pd.to_datetime([T0 + timedelta(seconds=i) for i in frame["id"]], utc=True)
    frame["removed_at"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
    return frame


def _rows(writer: SqlTableWriter) -> dict[int, tuple]:
    """``{id: (name, note, seen_at, removed_at)}`` as read back by the writer."""
    frame = writer.read_frame()
    return {
        int(r.id): (r.name, r.note, _instant(r.seen_at), _instant(r.removed_at))
        for r in frame.itertuples(index=False)
    }


def _instant(value) -> datetime | None:
    return None if pd.isna(value) else pd.Timestamp(value).to_pydatetime()


class UnknownDatabaseHook(SqliteHook):
    """A SQLite hook that reports a database the writer has no fast path for."""

    dialect_name = "somedb"  # type: ignore[assignment]


@pytest.fixture
def table(warehouse_conn: str) -> Iterator[str]:
    """A unique table name; it and any table named after it (staging) are dropped afterwards."""
    name = f"writer_{uuid.uuid4().hex[:10]}"
    yield name
    _drop_like(resolve_dbapi_hook(warehouse_conn), name)


def _drop_like(hook, prefix: str) -> None:
    engine = hook.get_sqlalchemy_engine()
    try:
        with engine.begin() as conn:
            for name in sa.inspect(conn).get_table_names():
                if name.startswith(prefix):
                    sa.Table(name, sa.MetaData()).drop(conn)
    finally:
        engine.dispose()


def _table_names(hook, prefix: str) -> list[str]:
    engine = hook.get_sqlalchemy_engine()
    try:
        # Sorted: the catalog's order is not the same on every database or run.
        return sorted(n for n in sa.inspect(engine).get_table_names() if n.startswith(prefix))
    finally:
        engine.dispose()


class TestModes:
    def test_replace_holds_exactly_the_frame(self, warehouse_conn, table):
        writer = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, SPEC, chunk_size=2)
        first = writer.write(_frame((1, "a"), (2, "b"), (3, "c")), "replace")
        assert (first.inserted, first.updated, first.removed, first.created_table) == (3, 0, 0, True)
        second = writer.write(_frame((2, "b"), (3, "changed"), (4, "d")), "replace")
        assert (second.inserted, second.updated, second.removed, second.created_table) == (1, 0, 1, False)
        rows = _rows(writer)
        assert sorted(rows) == [2, 3, 4]
        assert rows[3][0] == "changed"
        assert rows[4] == ("d", "note d", T0 + timedelta(seconds=4), None)

    def test_upsert_inserts_updates_and_soft_deletes(self, warehouse_conn, table):
        writer = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, SPEC, chunk_size=2)
        writer.write(_frame((1, "a"), (2, "b"), (3, "c")), "upsert", now=NOW)
        summary = writer.write(_frame((2, "b"), (3, "changed"), (4, "d")), "upsert", now=NOW)
        assert (summary.inserted, summary.updated, summary.removed) == (1, 1, 1)
        rows = _rows(writer)
        assert sorted(rows) == [1, 2, 3, 4]
        assert rows[1][3] == NOW  # gone: kept, stamped
        assert rows[3][0] == "changed" and rows[3][3] is None
        assert [rows[i][3] for i in (2, 3, 4)] == [None, None, None]

        again = writer.write(
            _frame((2, "b"), (3, "changed"), (4, "d")), "upsert", now=NOW + timedelta(days=1)
        )
        assert (again.inserted, again.updated, again.removed) == (0, 0, 0)
        assert _rows(writer)[1][3] == NOW  # not stamped again

        back = writer.write(_frame((1, "a"), (2, "b"), (3, "changed"), (4, "d")), "upsert", now=NOW)
        assert (back.inserted, back.updated, back.removed) == (0, 1, 0)
        assert all(row[3] is None for row in _rows(writer).values())

    def test_upsert_sees_a_null_becoming_a_value(self, warehouse_conn, table):
        writer = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, SPEC)
        frame = _frame((1, "a"))
        frame["note"] = None
        writer.write(frame, "upsert", now=NOW)
        summary = writer.write(_frame((1, "a")), "upsert", now=NOW)
        assert summary.updated == 1  # NULL vs 'note a' is a change (null-safe comparison)
        assert _rows(writer)[1][1] == "note a"

    def test_append_inserts_only_new_keys(self, warehouse_conn, table):
        writer = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, SPEC, chunk_size=2)
        writer.write(_frame((1, "a"), (2, "b")), "append")
        summary = writer.write(_frame((2, "changed"), (3, "c")), "append")
        assert (summary.inserted, summary.updated, summary.removed) == (1, 0, 0)
        rows = _rows(writer)
        assert sorted(rows) == [1, 2, 3] and rows[2][0] == "b"

    def test_insert_writes_every_row_without_key(self, warehouse_conn, table):
        spec = TableSpec(columns=SPEC.columns[1:], indexes=("name",))
        writer = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, spec, chunk_size=2)
        frame = _frame((1, "a"), (2, "a"), (3, "b")).drop(columns="id")
        assert writer.write(frame, "insert").inserted == 3
        assert writer.write(frame, "insert").inserted == 3
        assert writer.write(frame.iloc[:0], "insert").inserted == 0
        assert sorted(writer.read_frame()["name"]) == ["a", "a", "a", "a", "b", "b"]

    def test_replace_readers_see_old_rows_or_wait_until_commit(self, warehouse_conn, table, monkeypatch):
        """SQLite and MySQL readers see the old rows until the commit; PostgreSQL's TRUNCATE makes
        them wait (ACCESS EXCLUSIVE) until the commit, then see the new rows, never a mix."""
        writer = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, SPEC, chunk_size=1)
        writer.write(_frame((1, "a"), (2, "b")), "replace")
        reader = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, SPEC)
        seen: list[object] = []
        real_chunks = SqlTableWriter._chunks

        def read_during_load() -> object:
            if writer.dialect_name != "postgresql":
                return sorted(reader.read_frame()["id"])
            with reader.engine.connect() as conn:
                conn.exec_driver_sql("SET lock_timeout = '200ms'")
                try:
                    conn.exec_driver_sql(f"SELECT id FROM {table}").all()
                except sa.exc.OperationalError as exc:
                    return "waits" if "lock timeout" in str(exc) else str(exc)
                return "did not wait"

        def watching_chunks(self, frame):
            for chunk in real_chunks(self, frame):
                if self is writer:
                    seen.append(read_during_load())
                yield chunk

        monkeypatch.setattr(SqlTableWriter, "_chunks", watching_chunks)
        writer.write(_frame((3, "c"), (4, "d")), "replace")
        expected = "waits" if writer.dialect_name == "postgresql" else [1, 2]
        assert seen == [expected, expected]
        assert sorted(_rows(writer)) == [3, 4]

    @pytest.mark.parametrize("mode", ["replace", "upsert", "append", "insert"])
    def test_failure_mid_load_leaves_table_as_it_was(self, warehouse_conn, table, monkeypatch, mode):
        hook = resolve_dbapi_hook(warehouse_conn)
        writer = SqlTableWriter(hook, table, SPEC, chunk_size=1)
        writer.write(_frame((1, "a"), (2, "b")), "replace")
        before = _rows(writer)
        real_chunks = SqlTableWriter._chunks

        def failing_chunks(self, frame):
            for number, chunk in enumerate(real_chunks(self, frame)):
                if number == 1:
                    raise RuntimeError("simulated failure mid-load")
                yield chunk

        monkeypatch.setattr(SqlTableWriter, "_chunks", failing_chunks)
        with pytest.raises(RuntimeError, match="mid-load"):
            writer.write(_frame((3, "c"), (4, "d")), mode, now=NOW)
        assert _rows(writer) == before
        assert _table_names(hook, table) == [table]  # staging dropped


class TestTypes:
    def test_timestamps_are_stored_as_utc(self, warehouse_conn, table):
        hook = resolve_dbapi_hook(warehouse_conn)
        writer = SqlTableWriter(hook, table, SPEC)
        frame = _frame((1, "a"))
        frame["seen_at"] = pd.Timestamp("2024-03-01 13:30:15.5", tz="Europe/Paris")
        writer.write(frame, "replace")
        stored = hook.get_first(f"SELECT seen_at FROM {table}")[0]
        expected = datetime(2024, 3, 1, 12, 30, 15, 500000, tzinfo=timezone.utc)
        if writer.dialect_name == "sqlite":
            assert stored == "2024-03-01T12:30:15Z"  # ISO-8601 text, whole seconds
        elif writer.dialect_name == "mysql":
            assert stored == expected.replace(tzinfo=None)  # DATETIME(6), naive UTC
        else:
            assert stored == expected
        read_back = expected.replace(microsecond=0) if writer.dialect_name == "sqlite" else expected
        assert _rows(writer)[1][2] == read_back

    def test_schema_qualified_postgres_table(self, postgres_conn):
        hook = resolve_dbapi_hook(postgres_conn)
        name = f"writer_{uuid.uuid4().hex[:10]}"
        writer = SqlTableWriter(hook, f"public.{name}", SPEC)
        try:
            assert writer.write(_frame((1, "a")), "upsert", now=NOW).inserted == 1
            assert writer.write(_frame((2, "b")), "upsert", now=NOW).removed == 1
            types = dict(
                hook.get_records(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                    parameters=(name,),
                )
            )
            assert types == {
                "id": "bigint",
                "name": "character varying",
                "note": "text",
                "seen_at": "timestamp with time zone",
                "removed_at": "timestamp with time zone",
            }
        finally:
            hook.run(f"DROP TABLE IF EXISTS public.{name}")

    def test_mysql_types(self, mysql_conn):
        hook = resolve_dbapi_hook(mysql_conn)
        name = f"writer_{uuid.uuid4().hex[:10]}"
        try:
            SqlTableWriter(hook, name, SPEC).ensure_table()
            types = dict(
                hook.get_records(
                    "SELECT column_name, column_type FROM information_schema.columns "
                    "WHERE table_schema = 'test' AND table_name = %s",
                    parameters=(name,),
                )
            )
            types["id"] = types["id"].replace("bigint(20)", "bigint")  # MariaDB shows a display width
            assert types == {
                "id": "bigint",
                "name": "varchar(64)",
                "note": "text",
                "seen_at": "datetime(6)",
                "removed_at": "datetime(6)",
            }
        finally:
            hook.run(f"DROP TABLE IF EXISTS {name}")

    def test_long_text_holds_any_length(self, warehouse_conn, table):
        spec = TableSpec(
            columns=(Column("id", "bigint", nullable=False), Column("body", "long_text")),
            key="id",
            compared=("body",),
        )
        hook = resolve_dbapi_hook(warehouse_conn)
        writer = SqlTableWriter(hook, table, spec)
        value = "x" * 70_000 + "\u260e\U0001f600"  # over MySQL's TEXT (64 KiB); 4-byte UTF-8
        frame = pd.DataFrame({"id": [1], "body": [value]})
        writer.write(frame, "replace")
        assert writer.read_frame()["body"].tolist() == [value]
        assert writer.write(frame, "upsert").updated == 0
        if writer.dialect_name == "mysql":
            column_type, collation = hook.get_first(
                "SELECT c.column_type, t.table_collation FROM information_schema.columns c "
                "JOIN information_schema.tables t USING (table_schema, table_name) "
                "WHERE c.table_schema = 'test' AND c.table_name = %s AND c.column_name = 'body'",
                parameters=(table,),
            )
            assert column_type == "longtext" and collation.startswith("utf8mb4")

    def test_sqlite_types(self, sqlite_conn):
        hook = resolve_dbapi_hook(sqlite_conn)
        SqlTableWriter(hook, "stops", SPEC).ensure_table()
        types = {row[1]: row[2] for row in hook.get_records("PRAGMA table_info(stops)")}
        # INTEGER (not BIGINT) makes the key SQLite's rowid; timestamps are ISO-8601 text.
        assert types == {
            "id": "INTEGER",
            "name": "VARCHAR(64)",
            "note": "TEXT",
            "seen_at": "TEXT",
            "removed_at": "TEXT",
        }

    def test_postgres_copy_through_psycopg2(self, postgres_conn):
        """The COPY path also runs on psycopg2 (``copy_expert``), the driver of older Postgres providers."""
        hook = resolve_dbapi_hook(postgres_conn)
        url = hook.get_sqlalchemy_engine().url.set(drivername="postgresql+psycopg2")

        class Psycopg2Hook(type(hook)):  # type: ignore[misc]
            def get_sqlalchemy_engine(self, engine_kwargs=None):
                return sa.create_engine(url, **(engine_kwargs or {}))

        name = f"writer_{uuid.uuid4().hex[:10]}"
        writer = SqlTableWriter(Psycopg2Hook(postgres_conn_id=postgres_conn), name, SPEC, chunk_size=2)
        try:
            assert writer.engine.dialect.driver == "psycopg2"
            writer.write(_frame((1, "a"), (2, "b"), (3, "c")), "replace")
            summary = writer.write(_frame((2, "b"), (3, "changed")), "upsert", now=NOW)
            assert (summary.inserted, summary.updated, summary.removed) == (0, 1, 1)
            assert _rows(writer)[2] == ("b", "note b", T0 + timedelta(seconds=2), None)
        finally:
            hook.run(f"DROP TABLE IF EXISTS {name}")


class TestValidation:
    def test_missing_dataframe_column(self, sqlite_conn):
        writer = SqlTableWriter(resolve_dbapi_hook(sqlite_conn), "stops", SPEC)
        with pytest.raises(ValueError, match=r"lacks column\(s\) \['note'"):
            writer.write(_frame((1, "a")).drop(columns="note"), "replace")

    def test_key_needed_outside_insert(self, sqlite_conn):
        writer = SqlTableWriter(resolve_dbapi_hook(sqlite_conn), "stops", TableSpec(columns=SPEC.columns))
        with pytest.raises(ValueError, match="needs a key column"):
            writer.write(_frame((1, "a")), "upsert")

    @pytest.mark.parametrize("name", ['a"b', "a.b.c", "x; DROP TABLE y", "1a"])
    def test_table_name_checked_before_any_sql(self, name):
        class NoHook:
            dialect_name = "sqlite"

            def get_sqlalchemy_engine(self, **kwargs):
                raise AssertionError("no SQL expected")

        with pytest.raises(ValueError, match="table name"):
            SqlTableWriter(NoHook(), name, SPEC)


class TestStaging:
    """Keyed writes stage under one fixed name per table, which every run drops first."""

    def test_one_fixed_name_per_table(self):
        assert str(staging_name(TableName.parse("stops"))) == "stops__stg_smspartner"
        assert str(staging_name(TableName.parse("mart.stops"))) == "mart.stops__stg_smspartner"

    def test_long_names_fit_and_stay_apart(self):
        first, second = "a" * 61 + "x", "a" * 61 + "y"
        names = [staging_name(TableName.parse(name)).name for name in (first, second, "b" * 47)]
        assert all(len(name) <= 63 and name.endswith("__stg_smspartner") for name in names)
        assert names[0] != names[1]
        assert names[2] == "b" * 47 + "__stg_smspartner"
        assert staging_name(TableName.parse(first)).name == names[0]

    @pytest.mark.parametrize("mode", ["upsert", "append"])
    def test_a_leftover_is_dropped_by_the_next_write(self, warehouse_conn, table, mode):
        hook = resolve_dbapi_hook(warehouse_conn)
        writer = SqlTableWriter(hook, table, SPEC)
        writer.write(_frame((1, "a")), "replace")
        # What a run killed mid-load leaves behind: the staging table, with rows in it.
        leftover = str(staging_name(TableName.parse(table)))
        SqlTableWriter(hook, leftover, SPEC).write(_frame((1, "stale"), (9, "stale")), "replace")
        assert _table_names(hook, table) == sorted([table, leftover])
        summary = writer.write(_frame((1, "a"), (2, "b")), mode, now=NOW)
        assert (summary.inserted, summary.updated) == (1, 0)
        assert {i: row[0] for i, row in _rows(writer).items()} == {1: "a", 2: "b"}
        assert _table_names(hook, table) == [table]

    def test_repeated_key_is_refused(self, sqlite_conn):
        writer = SqlTableWriter(resolve_dbapi_hook(sqlite_conn), "stops", SPEC)
        with pytest.raises(
            ValueError,
            match=r"^Key column 'id' repeats 1 value\(s\) in the data for table stops \(e\.g\. 2\)",
        ):
            writer.write(_frame((1, "a"), (2, "b"), (2, "c")), "upsert")


class TestGuard:
    """``replace``/``upsert`` hand the live-row counts to a guard before the target changes."""

    @pytest.mark.parametrize("mode", ["replace", "upsert"])
    def test_counts_only_live_rows(self, warehouse_conn, table, mode):
        writer = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, SPEC)
        writer.write(_frame((1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")), "upsert", now=NOW)
        writer.write(_frame((2, "b"), (3, "c"), (4, "d"), (5, "e")), "upsert", now=NOW)  # 1 soft-deleted
        seen: list[RemovalCounts] = []
        writer.write(_frame((3, "c"), (4, "d"), (5, "e"), (6, "f")), mode, now=NOW, guard=seen.append)
        assert seen == [RemovalCounts(live=4, removed=1, incoming=4)]

    @pytest.mark.parametrize("mode", ["replace", "upsert"])
    def test_a_guard_that_raises_leaves_the_table_as_it_was(self, warehouse_conn, table, mode):
        hook = resolve_dbapi_hook(warehouse_conn)
        writer = SqlTableWriter(hook, table, SPEC)
        writer.write(_frame((1, "a"), (2, "b")), "replace")
        before = _rows(writer)

        def refuse(counts: RemovalCounts) -> None:
            raise RuntimeError(f"refused {counts}")

        with pytest.raises(RuntimeError, match=r"refused RemovalCounts\(live=2, removed=2, incoming=1\)"):
            writer.write(_frame((3, "c")), mode, now=NOW, guard=refuse)
        assert _rows(writer) == before
        assert _table_names(hook, table) == [table]

    def test_not_called_in_append(self, sqlite_conn):
        writer = SqlTableWriter(resolve_dbapi_hook(sqlite_conn), "stops", SPEC)
        writer.write(_frame((1, "a")), "append", guard=lambda counts: pytest.fail("guard called"))


class TestLock:
    """Keyed writes of one table run one at a time; a writer that waits too long fails clearly."""

    def test_a_second_writer_waits_then_fails_clearly(self, warehouse_conn, table):
        writer = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, SPEC, lock_timeout=0.5)
        writer.write(_frame((1, "a")), "replace")
        holder = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, SPEC)
        with holder._locked():
            started = time.monotonic()
            with pytest.raises(
                TimeoutError,
                match=rf"^Another run is writing table {table} and kept its lock for more than 0.5 s; "
                "nothing was written",
            ):
                writer.write(_frame((2, "b")), "upsert", now=NOW)
            assert time.monotonic() - started >= 0.5
        assert sorted(_rows(writer)) == [1]
        assert writer.write(_frame((2, "b")), "upsert", now=NOW).inserted == 1  # released

    @pytest.mark.parametrize("server", ["postgres", "mysql"])
    def test_the_lock_is_per_table(self, request, server):
        hook = resolve_dbapi_hook(request.getfixturevalue(f"{server}_conn"))
        table = f"writer_{uuid.uuid4().hex[:10]}"
        other = f"{table}_other"
        try:
            holder = SqlTableWriter(hook, table, SPEC)
            with holder._locked():
                assert (
                    SqlTableWriter(hook, other, SPEC, lock_timeout=0.5)
                    .write(_frame((1, "a")), "upsert")
                    .inserted
                )
        finally:
            _drop_like(hook, table)


class TestExistenceCheck:
    """A failing existence check raises its own error; it is never taken for a missing table."""

    @staticmethod
    def _no_create(monkeypatch, writer: SqlTableWriter) -> None:
        def refuse(conn, table):
            raise AssertionError(f"CREATE attempted for {table.name}")

        monkeypatch.setattr(writer, "_create", refuse)

    def test_postgres_role_without_privileges(self, postgres_conn, monkeypatch):
        admin = resolve_dbapi_hook(postgres_conn)
        role, name = f"smsp_noaccess_{uuid.uuid4().hex[:8]}", f"writer_{uuid.uuid4().hex[:10]}"
        owner = SqlTableWriter(admin, name, SPEC)
        owner.write(_frame((1, "a")), "replace")
        admin.run(f"CREATE ROLE {role} LOGIN")
        try:
            monkeypatch.setenv(
                "AIRFLOW_CONN_NOACCESS",
                json.dumps(
                    {
                        "conn_type": "postgres",
                        "host": "127.0.0.1",
                        "port": 5432,
                        "login": role,
                        "schema": "test",
                    }
                ),
            )
            writer = SqlTableWriter(resolve_dbapi_hook("noaccess"), name, SPEC)
            self._no_create(monkeypatch, writer)
            assert writer.ensure_table() is False  # the catalog shows the table even without privileges
            # Raised by SQLAlchemy or, on the bulk paths that use the driver directly, by the driver.
            with pytest.raises(Exception, match="permission denied for table"):
                writer.write(_frame((2, "b")), "replace")
            assert sorted(_rows(owner)) == [1]
        finally:
            admin.run(f"DROP TABLE IF EXISTS {name}")
            admin.run(f"DROP ROLE IF EXISTS {role}")

    def test_mysql_user_without_privileges(self, mysql_conn, monkeypatch):
        admin = resolve_dbapi_hook(mysql_conn)
        user, name = f"smsp_{uuid.uuid4().hex[:8]}", f"writer_{uuid.uuid4().hex[:10]}"
        visible = f"{name}_visible"
        SqlTableWriter(admin, name, SPEC).ensure_table()
        admin.run(f"CREATE TABLE {visible} (id INTEGER)")
        admin.run(f"CREATE USER '{user}'@'127.0.0.1'")
        try:
            # A grant on another table lets the user into the database, but not at the target.
            admin.run(f"GRANT SELECT ON test.{visible} TO '{user}'@'127.0.0.1'")
            monkeypatch.setenv(
                "AIRFLOW_CONN_NOACCESS",
                json.dumps(
                    {"conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "login": user, "schema": "test"}
                ),
            )
            writer = SqlTableWriter(resolve_dbapi_hook("noaccess"), name, SPEC)
            self._no_create(monkeypatch, writer)
            with pytest.raises(sa.exc.DBAPIError, match="command denied"):
                writer.write(_frame((1, "a")), "replace")
        finally:
            admin.run(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
            admin.run(f"DROP TABLE IF EXISTS {name}, {visible}")

    def test_unreachable_postgres(self, monkeypatch):
        monkeypatch.setenv(
            "AIRFLOW_CONN_NOWHERE",
            json.dumps(
                {
                    "conn_type": "postgres",
                    "host": "127.0.0.1",
                    "port": 9,
                    "login": "postgres",
                    "schema": "test",
                }
            ),
        )
        writer = SqlTableWriter(resolve_dbapi_hook("nowhere"), "stops", SPEC)
        self._no_create(monkeypatch, writer)
        with pytest.raises(sa.exc.OperationalError):
            writer.write(_frame((1, "a")), "replace")

    def test_sqlite_file_that_cannot_be_opened(self, monkeypatch, tmp_path):
        monkeypatch.setenv(
            "AIRFLOW_CONN_BROKEN_SQLITE",
            json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "missing-dir" / "db.sqlite")}),
        )
        writer = SqlTableWriter(resolve_dbapi_hook("broken_sqlite"), "stops", SPEC)
        self._no_create(monkeypatch, writer)
        with pytest.raises(sa.exc.OperationalError, match="unable to open database file"):
            writer.ensure_table()


class TestGenericPath:
    """Databases without a fast path load through ``DbApiHook.insert_rows`` (here: SQLite in disguise)."""

    @pytest.fixture
    def hook(self, sqlite_conn) -> UnknownDatabaseHook:
        return UnknownDatabaseHook(sqlite_conn_id=sqlite_conn)

    @pytest.fixture
    def calls(self, monkeypatch) -> list[dict]:
        recorded: list[dict] = []
        real_insert_rows = SqliteHook.insert_rows

        def spying_insert_rows(self, table, rows, target_fields=None, commit_every=1000, **kwargs):
            rows = list(rows)
            recorded.append(
                {"table": table, "rows": rows, "target_fields": target_fields, "commit_every": commit_every}
                | kwargs
            )
            return real_insert_rows(
                self, table, rows, target_fields=target_fields, commit_every=commit_every, **kwargs
            )

        monkeypatch.setattr(SqliteHook, "insert_rows", spying_insert_rows)
        return recorded

    def test_loads_with_insert_rows_executemany(self, hook, calls):
        writer = SqlTableWriter(hook, "stops", SPEC, chunk_size=2)
        assert (writer.dialect_name, writer.load_path) == ("somedb", "insert_rows")
        writer.write(_frame((1, "a"), (2, "b"), (3, "c")), "replace")
        assert len(calls) == 1
        call = calls[0]
        assert call["table"].startswith("stops__stg_")
        assert (call["target_fields"], call["commit_every"], call["executemany"]) == (SPEC.names, 2, True)
        # Values in the form the database stores: SQLite's ISO text for timestamps.
        assert call["rows"][0] == (1, "a", "note a", "2024-03-01T12:30:16Z", None)

    def test_modes(self, hook, calls):
        writer = SqlTableWriter(hook, "stops", SPEC, chunk_size=2)
        first = writer.write(_frame((1, "a"), (2, "b"), (3, "c")), "upsert", now=NOW)
        assert (first.inserted, first.updated, first.removed, first.created_table) == (3, 0, 0, True)
        upsert = writer.write(_frame((2, "b"), (3, "changed"), (4, "d")), "upsert", now=NOW)
        assert (upsert.inserted, upsert.updated, upsert.removed) == (1, 1, 1)
        rows = _rows(writer)
        assert rows[1][3] == NOW and rows[3][0] == "changed"

        append = writer.write(_frame((4, "changed"), (5, "e")), "append")
        assert (append.inserted, append.updated, append.removed) == (1, 0, 0)
        assert _rows(writer)[4][0] == "d"

        replace = writer.write(_frame((5, "e"), (6, "f")), "replace")
        assert (replace.inserted, replace.removed) == (1, 4)
        assert sorted(_rows(writer)) == [5, 6]
        assert hook.get_first("SELECT seen_at FROM stops WHERE id = 6")[0] == "2024-03-01T12:30:21Z"
        assert _table_names(hook, "stops") == ["stops"]  # staging tables dropped
        assert all(c["executemany"] is True for c in calls)

    def test_guard_and_fixed_staging_name(self, hook, calls):
        writer = SqlTableWriter(hook, "stops", SPEC, chunk_size=2)
        writer.write(_frame((1, "a"), (2, "b"), (3, "c")), "replace")
        seen: list[RemovalCounts] = []
        for mode in ("replace", "upsert"):
            writer.write(_frame((1, "a"), (2, "b")), mode, now=NOW, guard=seen.append)
        assert seen == [RemovalCounts(3, 1, 2), RemovalCounts(2, 0, 2)]
        assert {c["table"] for c in calls} == {"stops__stg_smspartner"}
        assert _table_names(hook, "stops") == ["stops"]

    def test_insert_mode_goes_through_staging(self, hook, calls, monkeypatch):
        spec = TableSpec(columns=SPEC.columns[1:])
        writer = SqlTableWriter(hook, "results", spec, chunk_size=2)
        frame = _frame((1, "a"), (2, "b"), (3, "c")).drop(columns="id")
        assert writer.write(frame, "insert").inserted == 3
        assert calls[0]["table"].startswith("results__stg_")

        real_chunks = SqlTableWriter._chunks

        def failing_chunks(self, frame):
            for number, chunk in enumerate(real_chunks(self, frame)):
                if number == 1:
                    raise RuntimeError("simulated failure mid-load")
                yield chunk

        monkeypatch.setattr(SqlTableWriter, "_chunks", failing_chunks)
        with pytest.raises(RuntimeError, match="mid-load"):
            writer.write(frame, "insert")
        assert len(writer.read_frame()) == 3  # the first chunk reached staging only
        assert _table_names(hook, "results") == ["results"]


FIRST_SEEN_SPEC = TableSpec(
    columns=(*SPEC.columns, Column("first_seen", "timestamp")),
    key="id",
    indexes=("name",),
    compared=("name", "note", "seen_at"),
    soft_delete="removed_at",
    first_seen="first_seen",
)
LATER = NOW + timedelta(days=1)


def _first_seen(writer: SqlTableWriter) -> dict[int, datetime]:
    frame = writer.read_frame()
    stamps = pd.to_datetime(frame["first_seen"], utc=True, format="mixed")
    return {int(i): s.to_pydatetime() for i, s in zip(frame["id"], stamps, strict=True)}


class TestFirstSeen:
    """The spec's ``first_seen`` column: the write time on insert, never changed afterwards."""

    @pytest.fixture
    def writer(self, warehouse_conn, table) -> SqlTableWriter:
        return SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, FIRST_SEEN_SPEC, chunk_size=2)

    def test_every_mode_keeps_it(self, writer):
        writer.write(_frame((1, "a"), (2, "b")), "upsert", now=NOW)
        assert _first_seen(writer) == {1: NOW, 2: NOW}
        writer.write(_frame((2, "changed"), (3, "c")), "upsert", now=LATER)  # 1 leaves, 2 changes
        assert _first_seen(writer) == {1: NOW, 2: NOW, 3: LATER}
        writer.write(_frame((1, "a"), (2, "changed"), (3, "c"), (4, "d")), "append", now=LATER + timedelta(1))
        assert _first_seen(writer)[4] == LATER + timedelta(1)
        writer.write(_frame((1, "back"), (2, "b"), (5, "e")), "replace", now=LATER + timedelta(2))
        assert _first_seen(writer) == {1: NOW, 2: NOW, 5: LATER + timedelta(2)}
        assert _rows(writer)[1][0] == "back"

    def test_frame_values_are_used_for_new_keys_only(self, writer):
        frame = _frame((1, "a"))
        frame["first_seen"] = pd.Timestamp(T0)
        writer.write(frame, "replace", now=NOW)
        again = _frame((1, "a"), (2, "b"))
        again["first_seen"] = pd.Timestamp(LATER)
        writer.write(again, "replace", now=LATER)
        assert _first_seen(writer) == {1: T0, 2: LATER}


class TestFirstSeenGenericPath(TestFirstSeen):
    """The same on the generic path (``insert_rows``): SQLite through a hook the writer does not know."""

    @pytest.fixture
    def writer(self, sqlite_conn) -> SqlTableWriter:
        hook = UnknownDatabaseHook(sqlite_conn_id=sqlite_conn)
        return SqlTableWriter(hook, f"writer_{uuid.uuid4().hex[:10]}", FIRST_SEEN_SPEC, chunk_size=2)


def _write_how(writer: SqlTableWriter, how: str, frame: pd.DataFrame, mode: str, **kwargs) -> WriteSummary:
    """``writer.write(frame, ...)``, or ``writer.write_chunks`` of ``frame`` one row at a time."""
    if how == "write":
        return writer.write(frame, mode, **kwargs)
    return writer.write_chunks((frame.iloc[[i]] for i in range(len(frame))), mode, **kwargs)


class TestBeforeCommit:
    @pytest.mark.parametrize("how", ["write", "write_chunks"])
    @pytest.mark.parametrize("mode", ["replace", "upsert", "append"])
    def test_commits_and_rolls_back_with_the_change(self, warehouse_conn, table, mode, how):
        hook = resolve_dbapi_hook(warehouse_conn)
        writer = SqlTableWriter(hook, table, SPEC)
        log_spec = TableSpec(columns=(Column("mode", "short_text"), Column("inserted", "bigint")))
        log = SqlTableWriter(hook, f"{table}_log", log_spec)
        log.ensure_table()

        def record(conn, summary):
            log.insert_row(conn, {"mode": mode, "inserted": summary.inserted})

        _write_how(writer, how, _frame((1, "a")), mode, now=NOW, before_commit=record)
        assert log.read_frame().to_dict("records") == [{"mode": mode, "inserted": 1}]

        def record_then_fail(conn, summary):
            record(conn, summary)
            raise RuntimeError("refused after the change")

        with pytest.raises(RuntimeError, match="refused after the change"):
            _write_how(writer, how, _frame((1, "a"), (2, "b")), mode, now=NOW, before_commit=record_then_fail)
        assert sorted(_rows(writer)) == [1]
        assert len(log.read_frame()) == 1
        assert _table_names(hook, table) == sorted([table, f"{table}_log"])  # staging dropped

    @pytest.mark.parametrize("how", ["write", "write_chunks"])
    def test_generic_path(self, sqlite_conn, how):
        writer = SqlTableWriter(UnknownDatabaseHook(sqlite_conn_id=sqlite_conn), "stops", SPEC)
        seen: list[list[int]] = []

        def read_then_fail(conn, summary):
            seen.append(sorted(row[0] for row in conn.execute(sa.select(writer.sql_table.c.id))))
            raise RuntimeError("refused after the change")

        _write_how(writer, how, _frame((1, "a")), "upsert", now=NOW)
        with pytest.raises(RuntimeError, match="refused after the change"):
            _write_how(writer, how, _frame((2, "b")), "upsert", now=NOW, before_commit=read_then_fail)
        assert seen == [[1, 2]]  # the change, seen on the write's connection
        assert sorted(_rows(writer)) == [1]

    def test_chained_callbacks_run_in_order_and_stop_at_a_raise(self, sqlite_conn):
        calls: list[str] = []

        def refuse(conn, summary):
            calls.append("refuse")
            raise RuntimeError("refused")

        assert chain_before_commit(None, None) is None
        writer = SqlTableWriter(resolve_dbapi_hook(sqlite_conn), "stops", SPEC)
        writer.ensure_table()
        chained = chain_before_commit(
            lambda c, s: calls.append("first"), None, refuse, lambda c, s: calls.append("x")
        )
        with pytest.raises(RuntimeError, match="refused"):
            writer.write(_frame((1, "a")), "upsert", now=NOW, before_commit=chained)
        assert calls == ["first", "refuse"]
        assert writer.read_frame().empty


class TestEnsureTable:
    def test_a_table_created_meanwhile_by_another_writer_is_fine(self, warehouse_conn, table, monkeypatch):
        hook = resolve_dbapi_hook(warehouse_conn)
        writer = SqlTableWriter(hook, table, SPEC)
        real_ensure = SqlTableWriter._ensure
        calls = []

        def racing_ensure(self, conn):
            calls.append(1)
            if len(calls) == 1:  # the other writer wins between our check and our CREATE
                SqlTableWriter(hook, table, SPEC).ensure_table()
                self._create(conn, self.sql_table)
            return real_ensure(self, conn)

        monkeypatch.setattr(SqlTableWriter, "_ensure", racing_ensure)
        assert writer.ensure_table() is False
        assert _table_names(hook, table) == [table]


class TestCopyCsv:
    """COPY's CSV: timestamps written column-wise must read as numpy writes them."""

    @pytest.mark.parametrize("fraction", [False, True], ids=["seconds", "microseconds"])
    def test_timestamps_match_numpy(self, fraction):
        from airflow_provider_smspartner.sql.copy_encoding import _timestamps_as_text

        rng = np.random.default_rng(7)
        micros = rng.integers(-62_135_596_800_000_000, 253_402_300_799_000_000, 20_000)
        if not fraction:
            micros -= micros % 1_000_000
        stamps = micros.astype("datetime64[us]")
        stamps[::7] = np.datetime64("NaT")
        stamps[1] = np.datetime64("2024-02-29T23:59:59")
        unit = "us" if fraction else "s"
        expected = [
            None if np.isnat(v) else np.datetime_as_string(v, unit=unit).replace("T", " ") for v in stamps
        ]
        assert _timestamps_as_text(stamps).to_pylist() == expected

    def test_constant_empty_and_out_of_range_columns(self):
        from airflow_provider_smspartner.sql.copy_encoding import _timestamps_as_text

        constant = np.array(["2024-01-01T10:00:00"] * 3, dtype="datetime64[us]")
        assert _timestamps_as_text(constant).to_pylist() == ["2024-01-01 10:00:00.000000"] * 3
        assert _timestamps_as_text(np.array(["NaT", "NaT"], dtype="datetime64[us]")).to_pylist() == [
            None,
            None,
        ]
        odd = np.array(["0000-06-01T00:00:00", "NaT", "2024-01-01T00:00:00"], dtype="datetime64[us]")
        assert _timestamps_as_text(odd).to_pylist() == [
            "0000-06-01T00:00:00.000000",
            None,
            "2024-01-01T00:00:00.000000",
        ]

    def test_copy_csv_row(self):
        from airflow_provider_smspartner.sql.copy_encoding import copy_csv

        frame = _frame((1, "a"), (2, 'say "hi"'))
        frame.loc[1, "note"] = None
        assert copy_csv(frame, SPEC).decode().splitlines() == [
            '1,"a","note a","2024-03-01 12:30:16",',
            '2,"say ""hi""",,"2024-03-01 12:30:17",',
        ]


class TestFrameSource:
    """A callable source runs while the writer connects, locks and reads; the table changes only after."""

    @pytest.mark.parametrize("mode", ["replace", "upsert", "append"])
    def test_callable_source(self, warehouse_conn, table, mode):
        writer = SqlTableWriter(resolve_dbapi_hook(warehouse_conn), table, SPEC, chunk_size=2)
        writer.write(_frame((1, "a"), (2, "b")), "replace")
        summary = writer.write(lambda: _frame((2, "b"), (3, "c")), mode, now=NOW)
        assert summary.inserted == 1
        assert set(_rows(writer)) == ({2, 3} if mode == "replace" else {1, 2, 3})

    @pytest.mark.parametrize("mode", ["replace", "upsert"])
    def test_a_failing_source_changes_nothing(self, warehouse_conn, table, mode):
        hook = resolve_dbapi_hook(warehouse_conn)
        writer = SqlTableWriter(hook, table, SPEC)
        writer.write(_frame((1, "a")), "replace")

        def source() -> pd.DataFrame:
            raise RuntimeError("the API said no")

        with pytest.raises(RuntimeError, match="the API said no"):
            writer.write(source, mode, now=NOW)
        assert _rows(writer) == {1: ("a", "note a", T0 + timedelta(seconds=1), None)}
        assert _table_names(hook, table) == [table]

    def test_a_source_frame_is_checked(self, sqlite_conn):
        writer = SqlTableWriter(resolve_dbapi_hook(sqlite_conn), "stops", SPEC)
        with pytest.raises(ValueError, match=r"repeats 1 value"):
            writer.write(lambda: _frame((1, "a"), (1, "b")), "replace")


class TestPrepareChunk:
    """``prepare_chunk`` makes the written rows chunk by chunk (keyed-hash mode hashes so), on
    PostgreSQL on the COPY's encoding thread; what the frame lacks is checked per chunk."""

    @staticmethod
    def _source(*rows: tuple[int, str]) -> pd.DataFrame:
        """``_frame``'s rows with ``raw`` (the name in lower case) in place of ``name``."""
        return _frame(*rows).rename(columns={"name": "raw"}).assign(raw=lambda f: f["raw"].str.lower())

    @pytest.fixture
    def calls(self) -> list[tuple[int, str]]:
        return []

    def _writer(self, hook, table: str, calls: list[tuple[int, str]]) -> SqlTableWriter:
        def prepare(chunk: pd.DataFrame) -> pd.DataFrame:
            calls.append((len(chunk), threading.current_thread().name))
            named = chunk.rename(columns={"raw": "name"})
            return named.assign(name=named["name"].str.upper())

        return SqlTableWriter(hook, table, SPEC, chunk_size=2, prepare_chunk=prepare)

    @pytest.mark.parametrize("mode", ["replace", "upsert", "append", "insert"])
    def test_every_chunk_is_prepared_once(self, warehouse_conn, table, mode, calls):
        hook = resolve_dbapi_hook(warehouse_conn)
        writer = self._writer(hook, table, calls)
        writer.write(self._source((1, "a")), "replace")
        calls.clear()
        summary = writer.write(lambda: self._source((2, "b"), (3, "c"), (4, "d")), mode, now=NOW)
        assert summary.inserted == 3
        assert [size for size, _ in calls] == [2, 1]
        if writer.load_path == "copy":  # overlapping the database's work on the COPY before
            assert all(thread.startswith("smspartner-copy") for _, thread in calls)
        names = {key: row[0] for key, row in _rows(writer).items()}
        assert names == ({2: "B", 3: "C", 4: "D"} if mode == "replace" else {1: "A", 2: "B", 3: "C", 4: "D"})

    def test_write_chunks(self, warehouse_conn, table, calls):
        writer = self._writer(resolve_dbapi_hook(warehouse_conn), table, calls)
        writer.write_chunks(
            iter([self._source((1, "a"), (2, "b"), (3, "c")), self._source((4, "d"))]), "upsert"
        )
        assert sorted(size for size, _ in calls) == [1, 1, 2]
        assert {key: row[0] for key, row in _rows(writer).items()} == {1: "A", 2: "B", 3: "C", 4: "D"}

    def test_generic_path(self, sqlite_conn, calls):
        writer = self._writer(UnknownDatabaseHook(sqlite_conn_id=sqlite_conn), "prepared", calls)
        writer.write(self._source((1, "a"), (2, "b"), (3, "c")), "upsert", now=NOW)
        assert [size for size, _ in calls] == [2, 1]
        assert {key: row[0] for key, row in _rows(writer).items()} == {1: "A", 2: "B", 3: "C"}

    @pytest.mark.parametrize("mode", ["replace", "upsert"])
    def test_a_chunk_prepared_without_a_column_changes_nothing(self, warehouse_conn, table, mode):
        hook = resolve_dbapi_hook(warehouse_conn)
        SqlTableWriter(hook, table, SPEC).write(_frame((1, "a")), "replace")
        writer = SqlTableWriter(
            hook, table, SPEC, chunk_size=2, prepare_chunk=lambda c: c.drop(columns="note")
        )
        with pytest.raises(
            ValueError, match=rf"A prepared chunk lacks column\(s\) \['note'\] needed by table {table}"
        ):
            writer.write(_frame((2, "b"), (3, "c"), (4, "d")), mode, now=NOW)
        assert _rows(writer) == {1: ("a", "note a", T0 + timedelta(seconds=1), None)}
        assert _table_names(hook, table) == [table]

    def test_the_frame_must_hold_the_key(self, sqlite_conn, calls):
        writer = self._writer(resolve_dbapi_hook(sqlite_conn), "prepared", calls)
        with pytest.raises(ValueError, match=r"DataFrame lacks column\(s\) \['id'\]"):
            writer.write(self._source((1, "a")).drop(columns="id"), "replace")
        assert calls == []


class TestBinaryCopy:
    """PostgreSQL loads the writer's own tables with binary COPY; other column types get CSV."""

    @pytest.fixture
    def table(self, postgres_conn) -> Iterator[str]:
        name = f"writer_{uuid.uuid4().hex[:10]}"
        yield name
        _drop_like(resolve_dbapi_hook(postgres_conn), name)

    def test_round_trip(self, postgres_conn, table, monkeypatch):
        from airflow_provider_smspartner.sql import postgres

        spec = TableSpec(
            columns=(
                Column("id", "bigint", nullable=False),
                Column("count", "int"),
                Column("name", "short_text"),
                Column("body", "long_text"),
                Column("at", "timestamp"),
            ),
            key="id",
        )
        frame = pd.DataFrame(
            {
                "id": [1, 2, 3, 2**62],
                "count": pd.array([7, None, -3, 2**31 - 1], dtype="Int64"),
                "name": ["a", None, "", "\u260e\U0001f600"],
                "body": ["x" * 70_000, "tab\\there", None, 'quote " and , comma'],
                "at": pd.to_datetime(
                    ["2024-03-01 12:30:15.123456", None, "1970-01-01", "1899-12-31 23:59:59"],
                    utc=True,
                    format="ISO8601",
                ),
            }
        )
        calls: list[str] = []
        for name in ("copy_binary", "copy_csv"):
            real = getattr(postgres, name)
            monkeypatch.setattr(
                postgres,
                name,
                lambda chunk, spec, real=real, name=name: calls.append(name) or real(chunk, spec),
            )
        writer = SqlTableWriter(resolve_dbapi_hook(postgres_conn), table, spec, chunk_size=3)
        writer.write(frame, "replace")
        assert set(calls) == {"copy_binary"}
        back = writer.read_frame().sort_values("id").reset_index(drop=True)
        assert back["id"].tolist() == frame["id"].tolist()
        assert [None if pd.isna(v) else int(v) for v in back["count"]] == [7, None, -3, 2**31 - 1]
        assert [None if pd.isna(v) else v for v in back["name"]] == ["a", None, "", "\u260e\U0001f600"]
        bodies = [None if pd.isna(v) else v for v in back["body"]]
        assert bodies == [None if pd.isna(v) else v for v in frame["body"]], "bodies differ"
        stamps = pd.to_datetime(back["at"], utc=True)
        assert [None if pd.isna(v) else v for v in stamps] == [None if pd.isna(v) else v for v in frame["at"]]

    def test_other_column_types_get_csv(self, postgres_conn, table, monkeypatch):
        from airflow_provider_smspartner.sql import postgres

        hook = resolve_dbapi_hook(postgres_conn)
        hook.run(
            f"CREATE TABLE {table} (id integer PRIMARY KEY, name text, note varchar(10), "
            "seen_at timestamp, removed_at timestamptz)"
        )
        used: list[str] = []
        real = postgres.copy_csv
        monkeypatch.setattr(postgres, "copy_csv", lambda chunk, spec: used.append("csv") or real(chunk, spec))
        writer = SqlTableWriter(hook, table, SPEC)
        writer.write(_frame((1, "a"), (2, "b")), "replace")
        assert used and sorted(_rows(writer)) == [1, 2]


class TestPostgresReplacePaths:
    """``replace`` rebuilds the indexes only where it may; otherwise DELETE + COPY, indexes in place."""

    @pytest.fixture
    def table(self, postgres_conn) -> Iterator[str]:
        name = f"writer_{uuid.uuid4().hex[:10]}"
        yield name
        _drop_like(resolve_dbapi_hook(postgres_conn), name)

    def _indexes(self, hook, table: str) -> dict[str, str]:
        return dict(
            hook.get_records(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", parameters=(table,)
            )
        )

    def test_a_role_that_does_not_own_the_table_deletes_and_loads(self, postgres_conn, table, monkeypatch):
        admin = resolve_dbapi_hook(postgres_conn)
        owner = SqlTableWriter(admin, table, SPEC)
        owner.write(_frame((1, "a"), (2, "b")), "replace")
        indexes = self._indexes(admin, table)
        role = f"smsp_writer_{uuid.uuid4().hex[:8]}"
        admin.run(f"CREATE ROLE {role} LOGIN")
        try:
            admin.run(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}")
            monkeypatch.setenv(
                "AIRFLOW_CONN_DML_ONLY",
                json.dumps(
                    {
                        "conn_type": "postgres",
                        "host": "127.0.0.1",
                        "port": 5432,
                        "login": role,
                        "schema": "test",
                    }
                ),
            )
            writer = SqlTableWriter(resolve_dbapi_hook("dml_only"), table, SPEC)
            summary = writer.write(_frame((2, "b"), (3, "c")), "replace")
            assert (summary.inserted, summary.removed) == (1, 1)
            assert sorted(_rows(owner)) == [2, 3]
            assert self._indexes(admin, table) == indexes
        finally:
            admin.run(f"DROP OWNED BY {role}")
            admin.run(f"DROP ROLE {role}")

    def test_the_owner_rebuilds_every_index_as_it_was(self, postgres_conn, table):
        hook = resolve_dbapi_hook(postgres_conn)
        writer = SqlTableWriter(hook, table, SPEC)
        writer.write(_frame((1, "a"), (2, "b")), "replace")
        hook.run(f"CREATE UNIQUE INDEX {table}_note_uq ON {table} (lower(note)) WHERE note IS NOT NULL")
        hook.run(f"ALTER TABLE {table} REPLICA IDENTITY USING INDEX {table}_pkey")
        hook.run(f"COMMENT ON TABLE {table} IS 'the stop list'")
        indexes = self._indexes(hook, table)
        writer.write(_frame((2, "b"), (3, "c"), (4, "d")), "replace")
        assert self._indexes(hook, table) == indexes
        assert hook.get_first(
            "SELECT relreplident, obj_description(oid) FROM pg_class WHERE oid = CAST(%s AS regclass)",
            parameters=(table,),
        ) == ("i", "the stop list")
        with pytest.raises(Exception, match="could not create unique index"):  # rolled back
            writer.write(_frame((5, "x"), (6, "y")).assign(note="same"), "replace")
        assert sorted(_rows(writer)) == [2, 3, 4]


# --------------------------------------------------------------------------- streamed writes
def _contacts(*rows: tuple[int, str | None]) -> pd.DataFrame:
    """Rows ``(contact_id, phone_e164)``; ``score`` (float), ``active`` (bool) and ``seen_at`` follow the id."""
    ids = [r[0] for r in rows]
    return pd.DataFrame(
        {
            "contact_id": pd.Series(ids, dtype="int64"),
            "phone_e164": pd.Series([r[1] for r in rows], dtype="string"),
            "score": pd.Series([i / 4 for i in ids], dtype="float64"),
            "active": pd.Series([i % 2 == 0 for i in ids], dtype="bool"),
            "seen_at": pd.to_datetime([T0 + timedelta(seconds=i) for i in ids], utc=True),
        }
    )


def _streamed(writer: SqlTableWriter) -> dict[int, tuple]:
    """``{contact_id: (phone_e164, score, active, seen_at)}`` as read back."""
    frame = writer.read_frame()
    return {
        int(r.contact_id): (
            None if pd.isna(r.phone_e164) else r.phone_e164,
            float(r.score),
            bool(r.active),
            _instant(pd.to_datetime(r.seen_at, utc=True)),
        )
        for r in frame.itertuples(index=False)
    }


class _Chunks:
    """An iterable of frames that records how many were taken, and may fail after some."""

    def __init__(self, *frames: pd.DataFrame, fail_after: int | None = None) -> None:
        self.frames, self.fail_after, self.taken = frames, fail_after, 0

    def __iter__(self) -> Iterator[pd.DataFrame]:
        for frame in self.frames:
            if self.fail_after is not None and self.taken == self.fail_after:
                raise RuntimeError("source broke")
            self.taken += 1
            yield frame


class TestTableSpecFor:
    def test_types_from_dtypes(self):
        frame = _contacts((1, "+33612345678")).assign(
            note=pd.Series(["x"], dtype=object),
            kind=pd.Series(["a"], dtype="category"),
            count=pd.Series([1], dtype="Int64"),
            naive=pd.Series([datetime(2024, 1, 1)]),
        )
        spec = table_spec_for(frame, key="contact_id", indexes=("phone_e164",))
        assert [(c.name, c.type, c.nullable) for c in spec.columns] == [
            ("contact_id", "bigint", False),
            ("phone_e164", "short_text", True),  # indexed: indexable everywhere
            ("score", "double", True),
            ("active", "bool", True),
            ("seen_at", "timestamp", True),
            ("note", "long_text", True),
            ("kind", "text", True),
            ("count", "bigint", True),
            ("naive", "timestamp", True),
        ]
        assert (spec.key, spec.indexes) == ("contact_id", ("phone_e164",))
        assert spec.compared == tuple(name for name in spec.names if name != "contact_id")

    def test_text_key_is_short_text(self):
        spec = table_spec_for(pd.DataFrame({"email": ["a@b"], "phone": ["x"]}), key="email")
        assert [c.type for c in spec.columns] == ["short_text", "long_text"]

    def test_missing_key_names_the_columns(self):
        with pytest.raises(ValueError, match=r"\['id'\].*\['email', 'phone'\]"):
            table_spec_for(pd.DataFrame({"email": ["a"], "phone": ["x"]}), key="id")


class TestWriteChunks:
    def _writer(self, conn_id: str, table: str, key: str | None = "contact_id") -> SqlTableWriter:
        spec = table_spec_for(_contacts((1, "x")), key=key, indexes=("phone_e164",))
        return SqlTableWriter(resolve_dbapi_hook(conn_id), table, spec, chunk_size=2)

    def test_replace_streams_every_chunk(self, warehouse_conn, table):
        writer = self._writer(warehouse_conn, table)
        chunks = _Chunks(_contacts((1, "+331"), (2, "+332")), _contacts((3, None)), _contacts((4, "+334")))
        first = writer.write_chunks(chunks, "replace")
        assert chunks.taken == 3
        assert (first.inserted, first.updated, first.removed, first.created_table) == (4, 0, 0, True)
        rows = _streamed(writer)
        assert rows[3] == (None, 0.75, False, T0 + timedelta(seconds=3))
        assert rows[4] == ("+334", 1.0, True, T0 + timedelta(seconds=4))

        changed = _contacts((2, "+332"), (3, "+333"))
        second = writer.write_chunks(iter([changed, _contacts((5, "+335"))]), "replace")
        assert (second.inserted, second.updated, second.removed, second.created_table) == (1, 1, 2, False)
        assert sorted(_streamed(writer)) == [2, 3, 5]
        assert _streamed(writer)[3][0] == "+333"

    def test_upsert_and_append(self, warehouse_conn, table):
        writer = self._writer(warehouse_conn, table)
        writer.write_chunks([_contacts((1, "+331"), (2, "+332"))], "upsert")
        upsert = writer.write_chunks([_contacts((2, "+330")), _contacts((3, "+333"))], "upsert")
        assert (upsert.inserted, upsert.updated, upsert.removed) == (1, 1, 0)  # no soft delete column
        assert {k: v[0] for k, v in _streamed(writer).items()} == {1: "+331", 2: "+330", 3: "+333"}
        append = writer.write_chunks([_contacts((3, "other"), (4, "+334"))], "append")
        assert (append.inserted, append.updated, append.removed) == (1, 0, 0)
        assert {k: v[0] for k, v in _streamed(writer).items()} == {1: "+331", 2: "+330", 3: "+333", 4: "+334"}

    def test_without_a_key(self, warehouse_conn, table):
        writer = self._writer(warehouse_conn, table, key=None)
        writer.write_chunks([_contacts((1, "a"), (1, "a")), _contacts((2, "b"))], "replace")
        assert sorted(writer.read_frame()["contact_id"].tolist()) == [1, 1, 2]
        summary = writer.write_chunks([_contacts((7, "c"))], "replace")
        assert (summary.inserted, summary.removed) == (1, 3)
        writer.write_chunks([_contacts((7, "c"))], "append")
        assert sorted(writer.read_frame()["contact_id"].tolist()) == [7, 7]
        with pytest.raises(ValueError, match=r"upsert.*needs a key"):
            writer.write_chunks([_contacts((7, "c"))], "upsert")

    def test_empty_stream_creates_the_table(self, warehouse_conn, table):
        writer = self._writer(warehouse_conn, table)
        summary = writer.write_chunks([], "replace")
        assert (summary.inserted, summary.created_table) == (0, True)
        assert writer.read_frame().empty

    def test_a_key_repeated_across_chunks_is_named_and_nothing_changes(self, warehouse_conn, table):
        writer = self._writer(warehouse_conn, table)
        writer.write_chunks([_contacts((1, "+331"))], "replace")
        chunks = [_contacts((10, "a"), (11, "b")), _contacts((12, "c"), (11, "d"))]
        with pytest.raises(ValueError, match=r"'contact_id' repeats .* \(e\.g\. 11\)"):
            writer.write_chunks(chunks, "replace")
        across = [_contacts((10, "a"), (11, "b")), _contacts((12, "c"), (10, "d"))]
        with pytest.raises(
            ValueError, match=r"'contact_id' repeats value\(s\) across chunks .* \(e\.g\. 10\)"
        ):
            writer.write_chunks(across, "upsert")
        assert _streamed(writer) == {1: ("+331", 0.25, False, T0 + timedelta(seconds=1))}
        assert _table_names(writer.hook, table) == [table]  # no staging left

    def test_a_key_repeated_across_chunks_of_a_first_load_is_named(self, warehouse_conn, table):
        """Into a table the write creates (PostgreSQL: loaded directly, the key built after)."""
        writer = self._writer(warehouse_conn, table)
        across = [_contacts((10, "a"), (11, "b")), _contacts((12, "c"), (10, "d"))]
        with pytest.raises(
            ValueError, match=r"'contact_id' repeats value\(s\) across chunks .* \(e\.g\. 10\)"
        ):
            writer.write_chunks(across, "replace")
        if writer.dialect_name == "mysql":  # DDL commits at once: the table stays, empty
            assert writer.read_frame().empty
        else:
            assert _table_names(writer.hook, table) == []  # created in the transaction rolled back
        first = writer.write_chunks([_contacts((10, "a")), _contacts((11, "b"))], "upsert")
        assert (first.inserted, first.created_table) == (2, writer.dialect_name != "mysql")
        assert sorted(_streamed(writer)) == [10, 11]

    def test_a_failing_source_leaves_the_table_as_it_was(self, warehouse_conn, table):
        writer = self._writer(warehouse_conn, table)
        writer.write_chunks([_contacts((1, "+331"))], "replace")
        chunks = _Chunks(_contacts((2, "a")), _contacts((3, "b")), fail_after=1)
        with pytest.raises(RuntimeError, match="source broke"):
            writer.write_chunks(chunks, "replace")
        assert sorted(_streamed(writer)) == [1]

    def test_a_missing_column_is_named(self, warehouse_conn, table):
        writer = self._writer(warehouse_conn, table)
        with pytest.raises(ValueError, match=r"lacks column\(s\) \['score'\]"):
            writer.write_chunks([_contacts((1, "a")).drop(columns="score")], "replace")

    def test_bad_mode(self, sqlite_conn):
        writer = self._writer(sqlite_conn, "contacts")
        with pytest.raises(ValueError, match="replace, upsert, append; got 'insert'"):
            writer.write_chunks([], "insert")

    def test_generic_path(self, sqlite_conn):
        spec = table_spec_for(_contacts((1, "x")), key="contact_id", indexes=("phone_e164",))
        writer = SqlTableWriter(
            UnknownDatabaseHook(sqlite_conn_id=sqlite_conn), "contacts", spec, chunk_size=2
        )
        assert writer.load_path == "insert_rows"
        writer.write_chunks([_contacts((1, "+331"), (2, "+332")), _contacts((3, "+333"))], "replace")
        summary = writer.write_chunks([_contacts((2, "+330")), _contacts((4, "+334"))], "upsert")
        assert (summary.inserted, summary.updated) == (1, 1)
        assert {k: v[0] for k, v in _streamed(writer).items()} == {1: "+331", 2: "+330", 3: "+333", 4: "+334"}
