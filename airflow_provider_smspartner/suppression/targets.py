"""Every place an operator reads or writes, checked distinct before anything runs.

Two arguments naming one place turn a safe run into a harmful one: an excluded file written over
the "safe" file puts every opted-out number in it; an output table that is also the excluded
table (or the audit table, or the source) ends up holding the wrong rows; an output written over
its own source destroys the audience. So every output, the audit table and what is read (the
source file, the tables a source query reads, the stop-list table the guard reads) are compared
before any API call, and a clash is refused naming both arguments.

Tables are the same when they live in the same database (the same server and database, or the
same SQLite file, whatever the connection id) under the same name once the default schema is
filled in; files when they resolve to the same local path (``file://`` URIs included) or the same
object-store URI.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Place:
    """Where an argument points: ``identity`` compares equal for one place however it is named."""

    argument: str
    shown: str
    identity: tuple[str, ...]
    written: bool


def file_place(argument: str, path: str, written: bool = True) -> Place:
    """A local path or ObjectStoragePath URI; local paths (and ``file://``) resolved, links followed."""
    text = str(path).strip()
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    identity: tuple[str, ...]
    if scheme in ("", "file", "local"):
        local = unquote(urlsplit(text).path) if scheme else text
        identity = ("file", str(Path(local).expanduser().resolve()))
    else:
        parts = urlsplit(text)
        identity = ("object", scheme, parts.netloc, parts.path.rstrip("/"))
    return Place(argument, text, identity, written)


def table_place(argument: str, conn_id: str, table: str, written: bool = True) -> Place:
    """Table ``table`` of SQL connection ``conn_id``, named as its database would resolve it."""
    database, name = _qualified(conn_id, table)
    return Place(argument, f"{table} (connection {conn_id})", ("table", database, name), written)


def query_places(conn_id: str, sql: str) -> list[Place]:
    """The tables a source query reads, as far as a SQL parser can tell (best effort: a query it
    cannot read gives none)."""
    try:
        from airflow_provider_smspartner.utils.lineage import sql_database

        database = sql_database(conn_id)
        names = database.tables_read(sql)
    except ImportError:  # no OpenLineage provider: no parser to ask
        return []
    return [
        Place(
            "sql",
            f"{name} (read by the query, connection {conn_id})",
            ("table", database.namespace, _fold(database.dialect, name)),
            False,
        )
        for name in names
    ]


def check_distinct(places: list[Place]) -> None:
    """Refuse two arguments pointing at one place when at least one of them is written.

    :raises ValueError: naming both arguments and the place.
    """
    for first, second in itertools.combinations(places, 2):
        if first.identity == second.identity and (first.written or second.written):
            raise ValueError(
                f"{first.argument} {first.shown!r} and {second.argument} {second.shown!r} are the same "
                f"{'file' if first.identity[0] != 'table' else 'table'}; give each its own (nothing was "
                "read, written or sent)."
            )


def _qualified(conn_id: str, table: str) -> tuple[str, str]:
    """``(database, schema.name)`` of ``table`` on ``conn_id``.

    Described by the lineage code (the connection's namespace and default schema) when the
    OpenLineage provider is installed; else by the connection's own fields, with the name as given.
    """
    from airflow_provider_smspartner.sql.names import TableName

    name = TableName.parse(table)
    try:
        from airflow_provider_smspartner.utils.lineage import sql_database

        database = sql_database(conn_id)
    except ImportError:
        from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_connection

        connection, hook = resolve_dbapi_connection(conn_id)
        dialect = str(getattr(hook, "dialect_name", None) or connection.conn_type)
        location = str(connection.host or "")
        if dialect == "sqlite" and location and not location.startswith(("file:", ":memory:")):
            location = str(Path(location).expanduser().resolve())
        namespace = f"{dialect}://{location}:{connection.port or ''}/{connection.schema or ''}"
        return namespace, _fold(dialect, str(name))
    return database.namespace, _fold(database.dialect, database.table_name(name.name, name.schema))


def _fold(dialect: str, name: str) -> str:
    """Names as the database compares them: SQLite's are case-insensitive, and MySQL's may be
    (``lower_case_table_names``): compared in lower case there, so a clash is never missed."""
    return name.lower() if dialect in ("sqlite", "mysql", "mariadb") else name
