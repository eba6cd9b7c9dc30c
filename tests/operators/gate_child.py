"""One gate run in a process of its own, for the tests that kill it while it writes its files.

    python -m tests.operators.gate_child '<json: source_path, output_path, excluded_path, chunk_size>'

The ``smspartner`` connection comes from the environment. Each chunk written to a file prints
``@@chunk`` and then pauses 20 ms (so the parent can kill it at any chunk); prints ``@@summary
<json>`` at the end.
"""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace
from typing import Any


def main() -> int:
    args = json.loads(sys.argv[1])
    from airflow_provider_smspartner.operators.smspartner import SmsPartnerSuppressAudienceOperator
    from airflow_provider_smspartner.suppression import sinks

    write = sinks.FileSink.write

    def announced_write(self: Any, frame: Any) -> None:
        write(self, frame)
        print("@@chunk", flush=True)
        time.sleep(0.02)

    sinks.FileSink.write = announced_write  # type: ignore[method-assign]
    op = SmsPartnerSuppressAudienceOperator(
        task_id="gate",
        source_path=args["source_path"],
        phone_column="phone",
        output_path=args["output_path"],
        excluded_path=args["excluded_path"],
        chunk_size=args["chunk_size"],
    )
    context: Any = {"dag": SimpleNamespace(dag_id="gate_dag"), "run_id": "manual__2026-01-01"}
    summary = op.execute(context)
    print("@@summary " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
