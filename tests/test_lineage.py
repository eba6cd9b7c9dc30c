"""``SmsPartnerStopListToSqlOperator.get_openlineage_facets_on_complete``, called as Airflow calls it.

The example DAGs' events in a real run are checked in ``tests/system/test_lineage_events.py``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.conftest import require_module

require_module("airflow.providers.openlineage", "install the [openlineage] extra")

#: The stop list's dataset name.
STOP_LIST = "stop-list"


def sandbox_namespace(sandbox) -> str:
    """The stop list's dataset namespace when the API is ``sandbox``."""
    return f"smspartner://{urlsplit(sandbox.url).netloc}"


class TestStopListToSqlMethod:
    """``get_openlineage_facets_on_complete`` called as Airflow would, after (or without) execute."""

    def test_after_execute(self, smspartner_conn, sqlite_conn, sandbox, unique_table, tmp_path):
        from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator

        operator = SmsPartnerStopListToSqlOperator(
            task_id="extract", sql_conn_id=sqlite_conn, table=unique_table
        )
        operator.execute({})
        lineage = operator.get_openlineage_facets_on_complete(None)

        (stop_list,) = lineage.inputs
        assert stop_list.name == STOP_LIST
        assert stop_list.namespace == sandbox_namespace(sandbox)
        assert stop_list.inputFacets["inputStatistics"].rowCount == len(sandbox.state)
        table, run_log = lineage.outputs
        assert table.name == f"main.{unique_table}"
        assert table.namespace == f"sqlite://{(tmp_path / 'warehouse.db').resolve()}"
        assert table.outputFacets["outputStatistics"].rowCount == len(sandbox.state)
        assert run_log.name == f"main.{unique_table}_runs"
        assert run_log.outputFacets["outputStatistics"].rowCount == 1

    def test_without_run_log_or_counts(self, smspartner_conn, sqlite_conn, unique_table):
        from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator

        operator = SmsPartnerStopListToSqlOperator(
            task_id="extract", sql_conn_id=sqlite_conn, table=unique_table, run_log_table=None
        )
        # As after a run that failed before the list came: no counts, and no run log row.
        lineage = operator.get_openlineage_facets_on_complete(None)
        assert [d.name for d in lineage.inputs] == [STOP_LIST]
        assert [d.name for d in lineage.outputs] == [f"main.{unique_table}"]
        assert lineage.inputs[0].inputFacets == {}
        assert lineage.outputs[0].outputFacets == {}
        assert "schema" in lineage.outputs[0].facets
