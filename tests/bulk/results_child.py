"""A process that prepares results tables on request, for the concurrent-creation test.

Reads ``<table> <start_at>`` lines on stdin; for each, waits until wall-clock ``start_at``, then
prepares the table as mapped task ``argv[2]`` of a run and writes one row; prints ``@@ok <created>``
or ``@@error <message>`` (other lines are logs). Prints ``@@ready`` once imported.

    python -m tests.bulk.results_child <conn_id> <map_index>
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    conn_id, map_index = sys.argv[1], int(sys.argv[2])
    import pandas as pd

    from airflow_provider_smspartner.bulk.results import ResultsTable, TaskIdentity

    print("@@ready", flush=True)
    for line in sys.stdin:
        table, start_at = line.split()
        time.sleep(max(0.0, float(start_at) - time.time()))
        try:
            identity = TaskIdentity("race_dag", "run_1", "add", map_index=map_index, try_number=1)
            results = ResultsTable(conn_id, table).prepare(identity)
            row = results._row_tuple(
                0, "0612345678", "+33612345678", "added", 7, None, None, None, pd.Timestamp.now(tz="UTC")
            )
            results.insert([row])
            results.close()
            print(f"@@ok {results.created}", flush=True)
        except Exception as exc:
            print(f"@@error {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
