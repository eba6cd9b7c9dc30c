"""A DataFrame through XCom in a whole DAG run (``dag.test()``), as the TaskFlow example passes it."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import TEST_API_KEY


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
