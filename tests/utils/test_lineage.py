"""The OpenLineage dataset builders: naming of the stop list, tables and files, and their facets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import require_module, smspartner_connection_json

require_module("airflow.providers.openlineage", "install the [openlineage] extra")

from openlineage.client.event_v2 import InputDataset, OutputDataset  # noqa: E402 (after the module check)
from openlineage.client.serde import Serde  # noqa: E402 (after the module check)

from airflow_provider_smspartner.utils import lineage  # noqa: E402 (after the module check)


def _smspartner(monkeypatch: pytest.MonkeyPatch, host: str | None, conn_id: str = "sms", **fields) -> str:
    payload = json.loads(smspartner_connection_json(host or ""))
    if host is None:
        payload.pop("host")
    payload.update(fields)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(payload))
    return conn_id


def _rows(dataset) -> int | None:
    if isinstance(dataset, InputDataset):
        facet = (dataset.inputFacets or {}).get("inputStatistics")
    else:
        facet = (dataset.outputFacets or {}).get("outputStatistics")
    return None if facet is None else facet.rowCount


def _fields(dataset) -> list[tuple[str, str | None]]:
    return [(field.name, field.type) for field in dataset.facets["schema"].fields]


def _sqlite_namespace(tmp_path: Path) -> str:
    return f"sqlite://{(tmp_path / 'warehouse.db').resolve()}"


class TestStopList:
    @pytest.mark.parametrize(
        ("host", "namespace"),
        [
            (None, "smspartner://api.smspartner.fr"),
            ("api.smspartner.fr", "smspartner://api.smspartner.fr"),
            ("https://API.SmsPartner.fr:443/v1/", "smspartner://api.smspartner.fr"),
            ("https://api.smspartner.fr:8443/v2", "smspartner://api.smspartner.fr:8443"),
            ("http://localhost:8080", "smspartner://localhost:8080"),
            ("http://[::1]:9000/v1", "smspartner://[::1]:9000"),
        ],
    )
    def test_namespace_is_the_api_host(self, monkeypatch, host, namespace):
        assert lineage.stop_list_namespace(_smspartner(monkeypatch, host)) == namespace

    def test_one_dataset_per_api_whatever_the_connection(self, monkeypatch):
        first = lineage.stop_list_dataset(_smspartner(monkeypatch, None, "one"))
        second = lineage.stop_list_dataset(_smspartner(monkeypatch, "api.smspartner.fr", "two"))
        assert (first.namespace, first.name) == (second.namespace, second.name)

    def test_sandbox_dataset_with_rows_and_schema(self, smspartner_conn, sandbox):
        dataset = lineage.stop_list_dataset(smspartner_conn, rows=5)
        assert dataset.namespace == f"smspartner://127.0.0.1:{urlsplit(sandbox.url).port}"
        assert dataset.name == "stop-list"
        assert _rows(dataset) == 5
        assert _fields(dataset) == [("id", "integer"), ("phoneNumber", "string"), ("createdAt", "string")]
        assert [field.ordinal_position for field in dataset.facets["schema"].fields] == [1, 2, 3]

    def test_rows_unknown_means_no_statistics(self, smspartner_conn):
        assert lineage.stop_list_dataset(smspartner_conn).outputFacets == {}

    def test_a_bad_host_is_refused(self, monkeypatch):
        from airflow_provider_smspartner.exceptions import SmsPartnerConfigError

        with pytest.raises(SmsPartnerConfigError, match="plain http"):
            lineage.stop_list_namespace(_smspartner(monkeypatch, "http://example.com"))


class TestSqlTable:
    def test_sqlite_namespace_is_the_database_file(self, sqlite_conn, tmp_path):
        dataset = lineage.sql_table_dataset(sqlite_conn, "stops", rows=3)
        assert dataset.namespace == _sqlite_namespace(tmp_path)
        assert dataset.name == "main.stops"
        assert _rows(dataset) == 3
        assert "schema" not in dataset.facets

    def test_sqlite_schema_given(self, sqlite_conn):
        assert lineage.sql_table_dataset(sqlite_conn, "other.stops").name == "other.stops"

    def test_columns_become_the_schema_facet(self, sqlite_conn):
        dataset = lineage.sql_table_dataset(sqlite_conn, "stops", columns={"stop_id": "bigint", "n": "text"})
        assert _fields(dataset) == [("stop_id", "bigint"), ("n", "text")]

    def test_postgres_uses_the_hooks_database_info(self, postgres_conn):
        dataset = lineage.sql_table_dataset(postgres_conn, "stops", rows=0)
        assert dataset.namespace == "postgres://127.0.0.1:5432"
        # database.schema.table, with the session's CURRENT_SCHEMA when the table names none.
        assert dataset.name == "test.public.stops"
        assert _rows(dataset) == 0
        assert lineage.sql_table_dataset(postgres_conn, "marketing.stops").name == "test.marketing.stops"

    def test_postgres_matches_common_sql_naming(self, postgres_conn):
        """The name common-sql's operators give the same table: one dataset in the lineage graph."""
        from airflow.providers.openlineage.sqlparser import SQLParser
        from airflow.sdk import BaseHook

        connection = BaseHook.get_connection(postgres_conn)
        hook = connection.get_hook()
        info = hook.get_openlineage_database_info(connection)
        parser = SQLParser(dialect="postgres", default_schema=hook.get_openlineage_default_schema())
        inputs, _ = parser.get_metadata_from_parser(
            parser.parse("SELECT * FROM stops").in_tables, [], info, SQLParser.create_namespace(info)
        )
        ours = lineage.sql_table_dataset(postgres_conn, "stops")
        assert [(d.namespace, d.name) for d in inputs] == [(ours.namespace, ours.name)]

    def test_mysql_schema_is_the_connections_database(self, mysql_conn):
        dataset = lineage.sql_table_dataset(mysql_conn, "stops")
        assert dataset.namespace == "mysql://127.0.0.1:3306"
        assert dataset.name == "test.stops"
        assert lineage.sql_table_dataset(mysql_conn, "crm.stops").name == "crm.stops"

    def test_a_connection_is_described_once_per_content(self, postgres_conn, smspartner_conn, monkeypatch):
        """The default schema costs a database round trip: once for the four tables of one
        suppression task, and again only when the connection changes."""
        from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook

        monkeypatch.setattr(lineage, "_DESCRIBED", {})
        hook_class = type(resolve_dbapi_hook(postgres_conn))
        real = hook_class.get_openlineage_default_schema
        calls: list[str] = []

        def counted(hook: Any) -> Any:
            calls.append(hook.get_conn_id())
            return real(hook)

        monkeypatch.setattr(hook_class, "get_openlineage_default_schema", counted)
        result = lineage.suppression_lineage(
            smspartner_conn,
            {"sql": "SELECT phone FROM crm.contacts", "sql_conn_id": postgres_conn},
            output_table="safe",
            excluded_table="excluded",
            audit_table="audit",
        )
        assert [d.name for d in result.outputs] == [
            "test.public.safe",
            "test.public.excluded",
            "test.public.audit",
        ]
        assert calls == [postgres_conn]
        changed = {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "login": "postgres",
            "schema": "postgres",
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{postgres_conn.upper()}", json.dumps(changed))
        assert lineage.sql_table_dataset(postgres_conn, "safe").name == "postgres.public.safe"
        assert calls == [postgres_conn, postgres_conn]

    def test_a_connection_that_is_not_sql_is_refused(self, smspartner_conn):
        with pytest.raises(ValueError, match="not a SQL"):
            lineage.sql_table_dataset(smspartner_conn, "stops")


class TestSqlQuery:
    def test_tables_of_a_simple_query(self, sqlite_conn, tmp_path):
        datasets, facets = lineage.sql_query_datasets(sqlite_conn, "SELECT phone FROM crm_unsubscribes")
        assert [(d.namespace, d.name) for d in datasets] == [
            (_sqlite_namespace(tmp_path), "main.crm_unsubscribes")
        ]
        assert facets["sql"].query == "SELECT phone FROM crm_unsubscribes"

    def test_every_table_read_once(self, postgres_conn):
        sql = (
            "SELECT c.phone FROM contacts c JOIN crm.optins o ON o.id = c.id "
            "WHERE c.id IN (SELECT id FROM contacts WHERE x > 1)"
        )
        datasets, _ = lineage.sql_query_datasets(postgres_conn, sql)
        assert sorted(d.name for d in datasets) == ["test.crm.optins", "test.public.contacts"]

    @pytest.mark.parametrize("sql", ["SELECT '+33612345678' AS phone", "THIS IS NOT\n  SQL AT ALL"])
    def test_a_query_the_parser_cannot_name_is_its_own_dataset(self, sqlite_conn, tmp_path, sql):
        (dataset,), facets = lineage.sql_query_datasets(sqlite_conn, sql)
        assert dataset.namespace == _sqlite_namespace(tmp_path)
        assert dataset.name == " ".join(sql.split())
        assert facets["sql"].query == sql


class TestFile:
    @pytest.mark.parametrize("form", ["plain", "uri"])
    def test_local_file_is_its_absolute_path(self, tmp_path, form):
        path = tmp_path / "stops.parquet"
        dataset = lineage.file_dataset(str(path) if form == "plain" else path.as_uri(), rows=7)
        assert (dataset.namespace, dataset.name) == ("file", str(path))
        assert _rows(dataset) == 7

    def test_relative_path_is_resolved(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        dataset = lineage.file_dataset("out/stops.csv")
        assert dataset.name == str(tmp_path.resolve() / "out" / "stops.csv")

    def test_object_storage_is_bucket_and_key(self):
        dataset = lineage.file_dataset("s3://bucket/smspartner/stop_list_2026-11-30.parquet")
        assert (dataset.namespace, dataset.name) == ("s3://bucket", "smspartner/stop_list_2026-11-30.parquet")

    def test_matches_common_io_file_assets(self, tmp_path):
        """An Asset("file://...") outlet and the operator's dataset are one dataset."""
        from airflow.providers.common.io.assets.file import convert_asset_to_openlineage, create_asset

        path = tmp_path / "stops.csv"
        theirs = convert_asset_to_openlineage(create_asset(path=str(path)), None)
        ours = lineage.file_dataset(str(path))
        assert (ours.namespace, ours.name) == (theirs.namespace, theirs.name)


class TestOperatorLineage:
    def test_inputs_carry_input_statistics(self, smspartner_conn, sqlite_conn):
        result = lineage.operator_lineage(
            [lineage.stop_list_dataset(smspartner_conn, 4)], [lineage.sql_table_dataset(sqlite_conn, "t", 4)]
        )
        (stop_list,) = result.inputs
        assert isinstance(stop_list, InputDataset)
        assert _rows(stop_list) == 4
        assert stop_list.facets["schema"].fields  # dataset facets kept
        (table,) = result.outputs
        assert isinstance(table, OutputDataset)
        assert _rows(table) == 4

    def test_any_openlineage_dataset_is_taken(self):
        from openlineage.client.event_v2 import Dataset

        result = lineage.operator_lineage([Dataset("ns", "a")], [Dataset("ns", "b")], {"x": None})
        assert isinstance(result.inputs[0], InputDataset)
        assert isinstance(result.outputs[0], OutputDataset)
        assert result.job_facets == {"x": None}

    def test_serialises_as_an_openlineage_event_would(self, smspartner_conn, tmp_path):
        result = lineage.stop_list_operator_lineage(smspartner_conn, 3, str(tmp_path / "s.parquet"))
        payload = json.loads(Serde.to_json(result.inputs[0]))
        assert payload["inputFacets"]["inputStatistics"]["rowCount"] == 3
        first = payload["facets"]["schema"]["fields"][0]
        assert (first["name"], first["type"], first["ordinal_position"]) == ("id", "integer", 1)
        payload = json.loads(Serde.to_json(result.outputs[0]))
        assert payload["outputFacets"]["outputStatistics"]["rowCount"] == 3


class TestReadyMadeLineage:
    def test_stop_list_operator(self, smspartner_conn, tmp_path):
        as_frame = lineage.stop_list_operator_lineage(smspartner_conn, 5, None)
        assert [d.name for d in as_frame.inputs] == ["stop-list"]
        assert as_frame.outputs == []
        to_file = lineage.stop_list_operator_lineage(smspartner_conn, 5, str(tmp_path / "s.csv"))
        (output,) = to_file.outputs
        assert (output.namespace, output.name, _rows(output)) == ("file", str(tmp_path / "s.csv"), 5)

    def test_bulk_add_from_sql(self, smspartner_conn, sqlite_conn):
        counts = {"total": 5, "added": 2, "duplicate": 1, "skipped_existing": 1, "invalid": 1}
        result = lineage.bulk_operator_lineage(
            smspartner_conn,
            {"sql": "SELECT phone FROM crm_unsubscribes", "sql_conn_id": sqlite_conn},
            results_table="smspartner_add_results",
            counts=counts,
        )
        assert [d.name for d in result.inputs] == ["main.crm_unsubscribes"]
        assert [(d.name, _rows(d)) for d in result.outputs] == [
            ("stop-list", 2),
            ("main.smspartner_add_results", 5),
        ]
        assert result.job_facets["sql"].query == "SELECT phone FROM crm_unsubscribes"

    def test_bulk_remove_from_a_list_and_from_a_file(self, smspartner_conn, sqlite_conn, tmp_path):
        counts = {"total": 3, "removed": 1, "not_on_list": 2}
        from_list = lineage.bulk_operator_lineage(
            smspartner_conn, {"phone_numbers": ["+33612345678"]}, "results", sqlite_conn, counts
        )
        assert from_list.inputs == []
        assert [(d.name, _rows(d)) for d in from_list.outputs] == [("stop-list", 1), ("main.results", 3)]
        from_file = lineage.bulk_operator_lineage(
            smspartner_conn, {"source_path": str(tmp_path / "n.csv")}, counts=counts
        )
        assert [(d.namespace, d.name, _rows(d)) for d in from_file.inputs] == [
            ("file", str(tmp_path / "n.csv"), 3)
        ]
        assert [d.name for d in from_file.outputs] == ["stop-list"]

    def test_counts_of_any_integer_type(self, smspartner_conn, sqlite_conn):
        import numpy as np

        counts = {"total": np.int64(3), "added": True, "failed": 1}  # a flag is not a count
        result = lineage.bulk_operator_lineage(
            smspartner_conn, {"phone_numbers": ["1"]}, "results", sqlite_conn, counts
        )
        assert [_rows(d) for d in result.outputs] == [None, 3]

    def test_bulk_results_table_needs_a_connection(self, smspartner_conn):
        with pytest.raises(ValueError, match="results_conn_id"):
            lineage.bulk_operator_lineage(smspartner_conn, {"phone_numbers": ["1"]}, "results")

    def test_suppression_to_tables(self, smspartner_conn, sqlite_conn):
        counts = {"audience": 10, "valid": 9, "invalid": 1, "duplicate": 2, "stopped": 3, "kept": 4}
        result = lineage.suppression_lineage(
            smspartner_conn,
            {"sql": "SELECT * FROM audience", "sql_conn_id": sqlite_conn},
            output_table="safe",
            excluded_table="excluded",
            audit_table="audit",
            counts=counts,
            rows_in_list=6,
        )
        assert [(d.name, _rows(d)) for d in result.inputs] == [("stop-list", 6), ("main.audience", None)]
        assert [(d.name, _rows(d)) for d in result.outputs] == [
            ("main.safe", 4),
            ("main.excluded", 6),
            ("main.audit", 1),
        ]

    def test_suppression_to_files_in_check_mode_and_with_audit_elsewhere(
        self, smspartner_conn, sqlite_conn, postgres_conn, tmp_path
    ):
        result = lineage.suppression_lineage(
            smspartner_conn,
            {"source_path": str(tmp_path / "audience.csv")},
            output_path=str(tmp_path / "safe.parquet"),
            excluded_path="s3://bucket/excluded.csv",
            audit_table="audit",
            audit_conn_id=postgres_conn,
            counts={"audience": 10, "kept": 7},
        )
        assert [(d.namespace, d.name, _rows(d)) for d in result.inputs] == [
            (lineage.stop_list_namespace(smspartner_conn), "stop-list", None),
            ("file", str(tmp_path / "audience.csv"), 10),
        ]
        assert [(d.namespace, d.name, _rows(d)) for d in result.outputs] == [
            ("file", str(tmp_path / "safe.parquet"), 7),
            ("s3://bucket", "excluded.csv", 3),
            ("postgres://127.0.0.1:5432", "test.public.audit", 1),
        ]
        check = lineage.suppression_lineage(smspartner_conn, {"phone_numbers": ["1"]}, counts={"audience": 1})
        assert [d.name for d in check.inputs] == ["stop-list"]
        assert check.outputs == []

    def test_phone_numbers_to_sql(self, sqlite_conn, postgres_conn):
        result = lineage.phone_numbers_to_sql_lineage(
            "SELECT contact_id, phone FROM marketing_contacts",
            sqlite_conn,
            postgres_conn,
            "contacts_e164",
            rows=4,
            columns={"contact_id": "bigint", "phone_e164": "short_text", "reason": "short_text"},
        )
        assert [d.name for d in result.inputs] == ["main.marketing_contacts"]
        (output,) = result.outputs
        assert (output.namespace, output.name, _rows(output)) == (
            "postgres://127.0.0.1:5432",
            "test.public.contacts_e164",
            4,
        )
        assert [name for name, _ in _fields(output)] == ["contact_id", "phone_e164", "reason"]
        assert "sql" in result.job_facets

    @pytest.mark.parametrize(
        ("source", "message"),
        [
            ({}, "exactly one"),
            ({"phone_numbers": ["1"], "source_path": "a.csv"}, "exactly one"),
            ({"sql": "SELECT 1"}, "sql_conn_id"),
        ],
    )
    def test_bad_sources(self, source, message):
        with pytest.raises(ValueError, match=message):
            lineage.source_datasets(source)


@pytest.mark.slow  # a child interpreter
def test_nothing_of_openlineage_is_imported_until_lineage_is_asked_for():
    """The provider stays optional: importing the module (or an operator) loads none of it (Airflow
    itself reads the installed providers' info when it starts: that is the baseline)."""
    script = (
        "import sys\n"
        "import airflow.sdk, airflow.providers.common.sql.hooks.sql\n"
        "before = set(sys.modules)\n"
        "import airflow_provider_smspartner.utils.lineage\n"
        "import airflow_provider_smspartner.transfers.smspartner_to_sql\n"
        "print(sorted(m for m in set(sys.modules) - before if 'openlineage' in m))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
