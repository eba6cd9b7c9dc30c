"""One try of a bulk add in a process of its own, for the tests that kill or stop it.

    python -m tests.bulk.bulk_child '<json: numbers_path, results_table, results_conn_id, try_number,
                                     max_workers, execution_timeout>'

The connections come from the environment (``AIRFLOW_CONN_*``), as in a worker. As Airflow's task
runner does: SIGTERM calls the operator's ``on_kill``, and ``execution_timeout`` (seconds, optional)
runs ``execute`` under Airflow's own signal-based timeout, calling ``on_kill`` when it fires (when
its timer sends SIGALRM, or when a test sends it to fire the timeout at a point of the run it
chooses). Prints ``@@started`` before the run, then ``@@summary <json>`` or ``@@raised <exception
type>`` once ``execute`` has ended (a stopped run's way out included: its outcomes are written).
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def main() -> int:
    args = json.loads(sys.argv[1])
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout

    from airflow_provider_smspartner.operators.smspartner import SmsPartnerAddStopsOperator

    numbers = json.loads(Path(args["numbers_path"]).read_text())
    op = SmsPartnerAddStopsOperator(
        task_id="add_stops",
        phone_numbers=numbers,
        results_table=args["results_table"],
        results_conn_id=args["results_conn_id"],
        max_workers=args.get("max_workers", 16),
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: op.on_kill())  # as the task runner does
    print("@@started", flush=True)
    ti = SimpleNamespace(
        dag_id="bulk_dag",
        run_id="manual__2026-01-01",
        task_id="add_stops",
        map_index=-1,
        try_number=args["try_number"],
    )
    context: Any = {"dag": SimpleNamespace(dag_id="bulk_dag"), "run_id": ti.run_id, "ti": ti}
    try:
        if args.get("execution_timeout"):
            try:
                with timeout(args["execution_timeout"]):
                    summary = op.execute(context)
            except AirflowTaskTimeout:
                op.on_kill()
                raise
        else:
            summary = op.execute(context)
    except BaseException as exc:
        print(f"@@raised {type(exc).__name__}", flush=True)
        return 1
    print("@@summary " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
