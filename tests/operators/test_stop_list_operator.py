"""SmsPartnerStopListOperator: DataFrame, Parquet and CSV outputs, and a real XCom round trip."""

from __future__ import annotations

import pandas as pd
import pytest

from airflow_provider_smspartner.operators.stop_list import SmsPartnerStopListOperator
from tests.conftest import TEST_API_KEY

COLUMNS = ["stop_id", "phone_number", "phone_e164", "created_at"]


@pytest.mark.usefixtures("smspartner_conn")
class TestSmsPartnerStopListOperator:
    def test_returns_dataframe(self, sandbox):
        frame = SmsPartnerStopListOperator(task_id="fetch").execute({})
        assert isinstance(frame, pd.DataFrame)
        assert list(frame.columns) == COLUMNS
        assert set(frame["phone_number"]) == sandbox.state.phone_numbers()

    @pytest.mark.parametrize("output_format", ["parquet", "csv"])
    @pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
    def test_writes_file_and_returns_path(self, sandbox, tmp_path, output_format, as_uri):
        target = tmp_path / "out" / f"stops.{output_format}"
        output_path = target.as_uri() if as_uri else str(target)
        result = SmsPartnerStopListOperator(
            task_id="fetch", output_path=output_path, output_format=output_format
        ).execute({})
        assert result.endswith(f"out/stops.{output_format}")
        frame = (
            pd.read_parquet(target)
            if output_format == "parquet"
            else pd.read_csv(target, dtype={"phone_number": "str", "phone_e164": "str"})
        )
        assert list(frame.columns) == COLUMNS
        assert set(frame["phone_number"]) == sandbox.state.phone_numbers()
        expected = {stop_id: created for stop_id, _, created in sandbox.state.list_entries()}
        created = pd.to_datetime(frame["created_at"], utc=True)
        assert {s: c.to_pydatetime() for s, c in zip(frame["stop_id"], created, strict=True)} == expected

    def test_bad_output_format(self, tmp_path):
        op = SmsPartnerStopListOperator(
            task_id="fetch", output_path=str(tmp_path / "x"), output_format="xlsx"
        )
        with pytest.raises(ValueError, match="output_format must be one of"):
            op.execute({})

    def test_templated_fields(self):
        assert {"output_path", "output_format", "smspartner_conn_id"} <= set(
            SmsPartnerStopListOperator.template_fields
        )


@pytest.mark.usefixtures("smspartner_conn")
def test_dataframe_xcom_round_trip_in_dag_test(example_dagbag, sandbox, tmp_path):
    """A real ``dag.test()``: the stop list DataFrame goes through XCom to a downstream task."""
    sandbox.state.seed_numbers(["+33698765432"])  # one of the sample contacts opted out
    dag = example_dagbag.get_dag("smspartner_taskflow_join")
    run = dag.test(run_conf={"output_dir": str(tmp_path)})
    assert run.state == "success"
    safe = pd.read_csv(tmp_path / "contacts_safe_to_text.csv", dtype={"phone": "str"})
    assert "+33698765432" not in set(safe["phone_e164"])
    assert set(safe["contact_id"]) == {1, 3, 4}  # 2 opted out, 5 has no usable number
    xcom = run.get_task_instance("write_safe_contacts").xcom_pull(task_ids="write_safe_contacts")
    assert xcom["stopped"] == 1 and TEST_API_KEY not in str(xcom)
