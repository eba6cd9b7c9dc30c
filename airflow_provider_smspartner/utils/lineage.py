"""OpenLineage datasets of the provider: the SMS Partner stop list, SQL tables and files.

Every operator of the provider reports its lineage through ``get_openlineage_facets_on_complete``,
a short delegation to the builders here. The OpenLineage provider
(``apache-airflow-providers-openlineage``, the ``[openlineage]`` extra) stays optional: Airflow
calls those methods only when it is installed, and this module imports it (and Airflow) only
inside its functions, so importing the module costs nothing.

Naming
------

- **The stop list** is one dataset per SMS Partner API: namespace ``smspartner://<host>[:port]``,
  the host (and port, unless it is the scheme's default) of the connection's API base URL, in
  lower case; name ``stop-list``. So the public API gives ``smspartner://api.smspartner.fr`` /
  ``stop-list`` whatever the connection id, and the local sandbox
  ``smspartner://127.0.0.1:<port>`` / ``stop-list``. Its schema facet has the fields of a list
  row as the API sends them: ``id`` (integer), ``phoneNumber`` and ``createdAt`` (strings).
- **A table** is named as common-sql's operators name it, from the SQL hook's own OpenLineage
  information (``hook.get_openlineage_database_info(connection)``): namespace
  ``SQLParser.create_namespace(info)`` (``postgres://host:5432``, ``mysql://host:3306``...), name
  ``database.schema.table``, with the hook's default schema (``CURRENT_SCHEMA`` on PostgreSQL; on
  MySQL/MariaDB, where a schema is a database, the connection's database) when the table names
  none. A hook without OpenLineage information gets the same shape from its connection:
  SQLite, namespace ``sqlite://<absolute path of the database file>`` and name ``main.<table>``;
  any other, ``<dialect>://host:port`` and ``database.schema.table``.
- **A file** is named from its ObjectStoragePath, as the OpenLineage helpers name object storage:
  namespace ``s3://bucket`` (``gs://bucket``...) and the key as the name; a local file, namespace
  ``file`` and its absolute path (``/data/stop_list.parquet``), as common-io's file Assets are.

Facets: each dataset may carry a row count and a schema (``SchemaDatasetFacet``). The builders
return :class:`~openlineage.client.event_v2.OutputDataset` objects whose row count is an
``OutputStatisticsOutputDatasetFacet``; :func:`operator_lineage` turns the inputs into
``InputDataset`` objects with the count as an ``InputStatisticsInputDatasetFacet``.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset, InputDataset, OutputDataset

#: Scheme of the stop list's namespace.
STOP_LIST_SCHEME = "smspartner"
#: Name of the stop-list dataset in its namespace.
STOP_LIST_NAME = "stop-list"
#: The fields of a stop-list row as the API sends them (``stop-sms/list``), with their types.
STOP_LIST_FIELDS: dict[str, str] = {"id": "integer", "phoneNumber": "string", "createdAt": "string"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SOURCE_KEYS = ("phone_numbers", "sql", "source_path")


# ------------------------------------------------------------------------------------ datasets
def stop_list_namespace(smspartner_conn_id: str) -> str:
    """``smspartner://<host>[:port]`` of the connection's API base URL (see the module docstring).

    :raises SmsPartnerConfigError: when the connection's host is not a usable API base URL.
    """
    from airflow.sdk import BaseHook

    from airflow_provider_smspartner.utils.connection import build_base_url

    conn = BaseHook.get_connection(smspartner_conn_id)
    parts = urlsplit(build_base_url(smspartner_conn_id, conn.host, conn.port))
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    port = parts.port
    authority = host if port is None or port == _DEFAULT_PORTS.get(parts.scheme) else f"{host}:{port}"
    return f"{STOP_LIST_SCHEME}://{authority}"


def stop_list_dataset(smspartner_conn_id: str, rows: int | None = None) -> OutputDataset:
    """The SMS Partner stop list of connection ``smspartner_conn_id``, with its schema.

    :param smspartner_conn_id: The ``smspartner`` connection (its API host names the namespace).
    :param rows: Stops in the list, or stops the task added or removed, when known.
    """
    return _dataset(stop_list_namespace(smspartner_conn_id), STOP_LIST_NAME, rows, STOP_LIST_FIELDS)


def sql_table_dataset(
    conn_id: str, table: str, rows: int | None = None, columns: Mapping[str, str] | None = None
) -> OutputDataset:
    """Table ``table`` (``name`` or ``schema.name``) of the SQL connection ``conn_id``.

    :param conn_id: A connection whose hook is a ``DbApiHook``.
    :param table: The table as the operator was given it.
    :param rows: Rows the task wrote, when known.
    :param columns: Column name -> type, in order, when known (a ``SchemaDatasetFacet``).
    :raises ValueError: when the connection's hook is not a SQL hook, or ``table`` is not a valid name.
    """
    from airflow_provider_smspartner.sql.names import TableName

    name = TableName.parse(table)
    database = _SqlDatabase.of(conn_id)
    return _dataset(database.namespace, database.table_name(name.name, name.schema), rows, columns)


def sql_database(conn_id: str) -> _SqlDatabase:
    """Where the tables of SQL connection ``conn_id`` live: its OpenLineage namespace, default
    schema and SQL dialect (also used to tell whether two arguments name one table).

    :raises ImportError: when the OpenLineage provider is not installed.
    """
    return _SqlDatabase.of(conn_id)


def sql_query_datasets(conn_id: str, sql: str) -> tuple[list[OutputDataset], dict[str, Any]]:
    """The tables a query reads, and its ``sql`` job facet.

    The query is parsed with the OpenLineage provider's ``SQLParser`` in the hook's dialect. When
    it parses and names the tables it reads, each becomes a dataset named as
    :func:`sql_table_dataset` names tables; otherwise (a query the parser cannot read, or one that
    reads no table) the input is one dataset in the database's namespace named by the query text
    itself (whitespace collapsed), so the source is still visible.

    :return: ``(datasets, {"sql": SQLJobFacet})``.
    """
    from openlineage.client.facet_v2 import sql_job

    database = _SqlDatabase.of(conn_id)
    facets: dict[str, Any] = {"sql": sql_job.SQLJobFacet(query=sql)}
    names = database.tables_read(sql)
    if names:
        return [_dataset(database.namespace, name) for name in names], facets
    return [_dataset(database.namespace, " ".join(sql.split()))], facets


def file_dataset(path: str, rows: int | None = None) -> OutputDataset:
    """The file at ``path`` (a local path or an ObjectStoragePath URI: ``file://``, ``s3://``...).

    :param path: The path as the operator was given it (relative local paths are resolved).
    :param rows: Rows the task wrote or read, when known.
    """
    from airflow_provider_smspartner.utils.storage import to_storage_path

    target = to_storage_path(path)
    if target.protocol in ("file", "local"):
        return _dataset("file", "/" + target.key.lstrip("/"), rows)
    return _dataset(target.namespace, target.key, rows)


def operator_lineage(
    inputs: Sequence[Dataset],
    outputs: Sequence[Dataset],
    job_facets: Mapping[str, Any] | None = None,
) -> OperatorLineage:
    """The ``OperatorLineage`` of a task: ``inputs`` as ``InputDataset`` (a row count becomes an
    ``InputStatisticsInputDatasetFacet``), ``outputs`` as ``OutputDataset``.

    :param inputs: Datasets the task read (built by this module, or any OpenLineage dataset).
    :param outputs: Datasets the task wrote.
    :param job_facets: Job facets, e.g. the ``sql`` facet of :func:`sql_query_datasets`.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=[_as_input(dataset) for dataset in inputs],
        outputs=[_as_output(dataset) for dataset in outputs],
        job_facets=dict(job_facets or {}),
    )


# ------------------------------------------------------------------ ready-made operator lineage
def stop_list_operator_lineage(conn_id: str, rows: int | None, output_path: str | None) -> OperatorLineage:
    """SmsPartnerStopListOperator: the stop list in; the file out when ``output_path`` is set (a
    DataFrame through XCom is no dataset).

    :param conn_id: The operator's ``smspartner_conn_id``.
    :param rows: Stops fetched (the file's rows).
    :param output_path: The rendered ``output_path``, or None.
    """
    outputs = [file_dataset(output_path, rows)] if output_path else []
    return operator_lineage([stop_list_dataset(conn_id, rows)], outputs)


def bulk_operator_lineage(
    smspartner_conn_id: str,
    source: Mapping[str, Any],
    results_table: str | None = None,
    results_conn_id: str | None = None,
    counts: Mapping[str, Any] | None = None,
) -> OperatorLineage:
    """SmsPartnerAddStopsOperator / SmsPartnerRemoveStopsOperator: the source in; the stop list
    and the results table out.

    :param smspartner_conn_id: The operator's ``smspartner_conn_id``.
    :param source: The operator's one source: ``{"phone_numbers": ...}`` (no input dataset),
        ``{"sql": ..., "sql_conn_id": ...}`` (the tables of the query, see
        :func:`sql_query_datasets`) or ``{"source_path": ...}`` (the file).
    :param results_table: The results table, if any.
    :param results_conn_id: Its connection (default ``source["sql_conn_id"]``).
    :param counts: The task's return value: ``total`` rows read and recorded; ``added`` (or
        ``removed``) stops changed on the list.
    """
    counts = counts or {}
    inputs, job_facets = source_datasets(source, _count(counts, "total"))
    changed = _count(counts, "added") if "added" in counts else _count(counts, "removed")
    outputs = [stop_list_dataset(smspartner_conn_id, changed)]
    if results_table:
        conn = results_conn_id or source.get("sql_conn_id")
        if not conn:
            raise ValueError(f"results_table {results_table!r} needs a connection: set results_conn_id.")
        outputs.append(sql_table_dataset(str(conn), results_table, _count(counts, "total")))
    return operator_lineage(inputs, outputs, job_facets)


def suppression_lineage(
    smspartner_conn_id: str,
    source: Mapping[str, Any],
    *,
    output_table: str | None = None,
    output_conn_id: str | None = None,
    output_path: str | None = None,
    excluded_table: str | None = None,
    excluded_path: str | None = None,
    audit_table: str | None = None,
    audit_conn_id: str | None = None,
    counts: Mapping[str, Any] | None = None,
    rows_in_list: int | None = None,
) -> OperatorLineage:
    """SmsPartnerSuppressAudienceOperator: the audience and the stop list in; the safe audience
    (table or file), the excluded rows and the audit table out.

    :param smspartner_conn_id: The operator's ``smspartner_conn_id``.
    :param source: The audience, as for :func:`bulk_operator_lineage`.
    :param output_table: Table of the kept rows (on ``output_conn_id``, default
        ``source["sql_conn_id"]``), or
    :param output_path: file of the kept rows.
    :param excluded_table: Table of the excluded rows (same connection as ``output_table``), or
    :param excluded_path: file of the excluded rows.
    :param audit_table: The audit table (on ``audit_conn_id``, default the output connection).
    :param counts: The task's return value: ``audience`` rows read, ``kept`` rows written; the
        excluded rows are ``audience - kept``.
    :param rows_in_list: Stops in the list, when known.
    """
    counts = counts or {}
    audience, kept = _count(counts, "audience"), _count(counts, "kept")
    excluded = None if audience is None or kept is None else audience - kept
    inputs, job_facets = source_datasets(source, audience)
    inputs.insert(0, stop_list_dataset(smspartner_conn_id, rows_in_list))
    output_conn = output_conn_id or source.get("sql_conn_id")
    outputs: list[OutputDataset] = []
    for table, path, rows in ((output_table, output_path, kept), (excluded_table, excluded_path, excluded)):
        if path:
            outputs.append(file_dataset(path, rows))
        elif table:
            outputs.append(sql_table_dataset(_required(output_conn, table), table, rows))
    if audit_table:
        outputs.append(
            sql_table_dataset(_required(audit_conn_id or output_conn, audit_table), audit_table, 1)
        )
    return operator_lineage(inputs, outputs, job_facets)


def phone_numbers_to_sql_lineage(
    sql: str,
    source_conn_id: str,
    destination_conn_id: str,
    destination_table: str,
    rows: int | None,
    columns: Mapping[str, str] | None = None,
) -> OperatorLineage:
    """PhoneNumbersToSqlOperator: the tables of the query in; the destination table out.

    :param sql: The rendered query.
    :param source_conn_id: Its connection.
    :param destination_conn_id: The destination table's connection.
    :param destination_table: The destination table.
    :param rows: Rows written.
    :param columns: The table's columns (name -> type), when known, e.g. from the operator's
        ``TableSpec``: ``{c.name: c.type for c in spec.columns}``.
    """
    inputs, job_facets = sql_query_datasets(source_conn_id, sql)
    output = sql_table_dataset(destination_conn_id, destination_table, rows, columns)
    return operator_lineage(inputs, [output], job_facets)


def source_datasets(
    source: Mapping[str, Any], rows: int | None = None
) -> tuple[list[OutputDataset], dict[str, Any]]:
    """The input datasets of a phone-number source and its job facets (``sql`` for a query).

    :param source: ``{"sql": ..., "sql_conn_id": ...}``, ``{"source_path": ...}`` or
        ``{"phone_numbers": ...}`` (values given directly or through XCom: no dataset).
    :param rows: Rows read, recorded on a file (a query's tables were read in part, or joined).
    :raises ValueError: when ``source`` holds no source, or ``sql`` without ``sql_conn_id``.
    """
    given = [key for key in _SOURCE_KEYS if source.get(key) is not None]
    if len(given) != 1:
        raise ValueError(f"source must hold exactly one of {', '.join(_SOURCE_KEYS)}, got {given or 'none'}.")
    if given == ["sql"]:
        if not source.get("sql_conn_id"):
            raise ValueError("A sql source needs its sql_conn_id.")
        return sql_query_datasets(str(source["sql_conn_id"]), str(source["sql"]))
    if given == ["source_path"]:
        return [file_dataset(str(source["source_path"]), rows)], {}
    return [], {}


# ------------------------------------------------------------------------------------ internals
def _dataset(
    namespace: str, name: str, rows: int | None = None, columns: Mapping[str, str] | None = None
) -> OutputDataset:
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset, schema_dataset

    facets: dict[str, Any] = {}
    if columns:
        facets["schema"] = schema_dataset.SchemaDatasetFacet(
            fields=[
                schema_dataset.SchemaDatasetFacetFields(name=name, type=kind, ordinal_position=position)
                for position, (name, kind) in enumerate(columns.items(), start=1)
            ]
        )
    output_facets: dict[str, Any] = {}
    if rows is not None:
        output_facets["outputStatistics"] = (
            output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=int(rows))
        )
    return OutputDataset(namespace=namespace, name=name, facets=facets, outputFacets=output_facets)


def _as_input(dataset: Dataset) -> InputDataset:
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import input_statistics_input_dataset, output_statistics_output_dataset

    if isinstance(dataset, InputDataset):
        return dataset
    input_facets: dict[str, Any] = {}
    facets = (dataset.outputFacets or {}) if isinstance(dataset, OutputDataset) else {}
    statistics = facets.get("outputStatistics")
    if isinstance(statistics, output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet):
        input_facets["inputStatistics"] = input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
            rowCount=statistics.rowCount, size=statistics.size, fileCount=statistics.fileCount
        )
    return InputDataset(
        namespace=dataset.namespace, name=dataset.name, facets=dataset.facets, inputFacets=input_facets
    )


def _as_output(dataset: Dataset) -> OutputDataset:
    from openlineage.client.event_v2 import OutputDataset

    if isinstance(dataset, OutputDataset):
        return dataset
    return OutputDataset(namespace=dataset.namespace, name=dataset.name, facets=dataset.facets)


def _count(counts: Mapping[str, Any], key: str) -> int | None:
    """``counts[key]`` as an int (numpy integers too), or None when absent or not a count."""
    value = counts.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _required(conn_id: str | None, table: str) -> str:
    if not conn_id:
        raise ValueError(f"Table {table!r} needs a connection.")
    return conn_id


@dataclass(frozen=True)
class _SqlDatabase:
    """Where a SQL connection's tables live, in OpenLineage terms."""

    hook: Any
    namespace: str
    dialect: str
    database: str | None
    default_schema: str | None
    uppercase: bool = False

    @classmethod
    def of(cls, conn_id: str) -> _SqlDatabase:
        """The database of connection ``conn_id``, described once per process and connection.

        A task's lineage names up to four tables of one connection (source, output, excluded
        rows, audit), and describing it costs a database round trip (the default schema, on a new
        connection); the key is the connection's content, so a changed connection is described
        again.
        """
        from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_connection

        connection, hook = resolve_dbapi_connection(conn_id)
        key = (conn_id, hashlib.sha256(connection.get_uri().encode()).hexdigest())
        if key not in _DESCRIBED:
            _DESCRIBED[key] = cls._describe(connection, hook)
        return _DESCRIBED[key]

    @classmethod
    def _describe(cls, connection: Any, hook: Any) -> _SqlDatabase:
        from airflow.providers.common.sql.hooks.sql import DbApiHook
        from airflow.providers.openlineage.sqlparser import SQLParser

        try:
            info = hook.get_openlineage_database_info(connection)
        except AttributeError:
            info = None
        dialect_name = str(getattr(hook, "dialect_name", None) or connection.conn_type or "generic")
        if info is not None:
            # MySQL/MariaDB: no default schema in the hook, a schema is a database: the connection's.
            schema = hook.get_openlineage_default_schema() or connection.schema or None
            return cls(
                hook=hook,
                namespace=SQLParser.create_namespace(info),
                dialect=hook.get_openlineage_database_dialect(connection),
                database=info.database,
                default_schema=schema,
                uppercase=bool(info.is_uppercase_names),
            )
        if dialect_name == "sqlite":
            from pathlib import Path

            location = str(connection.host or "")
            if location and location != ":memory:" and not location.startswith("file:"):
                location = str(Path(location).expanduser().resolve())
            return cls(hook, f"sqlite://{location}", "sqlite", None, "main")
        authority = DbApiHook.get_openlineage_authority_part(connection) if connection.host else None
        namespace = f"{dialect_name}://{authority}" if authority else dialect_name
        return cls(
            hook, namespace, "generic", connection.schema or None, hook.get_openlineage_default_schema()
        )

    def table_name(self, name: str, schema: str | None = None, database: str | None = None) -> str:
        """``database.schema.name`` of table ``name``, the connection's database and default schema
        filling what is not given; quotes around a part (as a SQL parser may keep them) dropped."""
        parts = (database or self.database, schema or self.default_schema, name)
        qualified = ".".join(part.strip().strip('"`[]') for part in parts if part)
        return qualified.upper() if self.uppercase else qualified

    def tables_read(self, sql: str) -> list[str]:
        """Names of the tables ``sql`` reads, or ``[]`` when the parser cannot tell."""
        from airflow.providers.openlineage.sqlparser import SQLParser

        parser = SQLParser(dialect=self.dialect, default_schema=None)
        try:
            meta = parser.parse(parser.split_sql_string(sql))
        except Exception:
            return []
        if meta is None or getattr(meta, "errors", None):
            return []
        names = [self.table_name(table.name, table.schema, table.database) for table in meta.in_tables]
        return list(dict.fromkeys(names))


#: :meth:`_SqlDatabase.of`'s descriptions: (connection id, hash of the connection's URI) -> database.
#: A process meets a handful of connections; a hash, so no password is kept as a key.
_DESCRIBED: dict[tuple[str, str], _SqlDatabase] = {}
