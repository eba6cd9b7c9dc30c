"""One try of a bulk add in a process of its own, for the tests that kill it.

    python -m tests.bulk.bulk_child '<json: numbers_path, results_table, results_conn_id, try_number, max_workers>'

The connections come from the environment (``AIRFLOW_CONN_*``), as in a worker. Prints ``@@started``
before the run and ``@@summary <json>`` after it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace


def main() -> int:
    args = json.loads(sys.argv[1])
    from airflow_provider_smspartner.operators.smspartner import SmsPartnerAddStopsOperator

    numbers = json.loads(Path(args["numbers_path"]).read_text())
    op = SmsPartnerAddStopsOperator(
        task_id="add_stops",
        phone_numbers=numbers,
        results_table=args["results_table"],
        results_conn_id=args["results_conn_id"],
        max_workers=args.get("max_workers", 16),
    )
    print("@@started", flush=True)
    ti = SimpleNamespace(
        dag_id="bulk_dag",
        run_id="manual__2026-01-01",
        task_id="add_stops",
        map_index=-1,
        try_number=args["try_number"],
    )
    summary = op.execute({"dag": SimpleNamespace(dag_id="bulk_dag"), "run_id": ti.run_id, "ti": ti})  # type: ignore[arg-type]
    print("@@summary " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
