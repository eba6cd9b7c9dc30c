"""What a DAG parse pays for the provider: modules and seconds added by importing each parse-time module.

Each import runs in a fresh interpreter after ``import airflow.sdk`` (what every DAG file loads
anyway), ``--runs`` times; the median is printed. The last line is the baseline of the same run:
the same interpreter importing pandas, pyarrow and phonenumbers, i.e. what the provider's
operators cost before they loaded those inside ``execute``.

    .venv/bin/python benchmarks/bench_import.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

MODULES = (
    "airflow_provider_smspartner.hooks.smspartner",
    "airflow_provider_smspartner.operators.smspartner",
    "airflow_provider_smspartner.transfers.smspartner_to_sql",
)
BASELINE = "pandas, pyarrow, pyarrow.json, phonenumbers"
HEAVY = ("pandas", "numpy", "pyarrow", "phonenumbers", "sqlalchemy")

SCRIPT = """
import json, sys, time
import airflow.sdk
before = set(sys.modules)
started = time.perf_counter()
exec("import " + sys.argv[1])
seconds = time.perf_counter() - started
new = set(sys.modules) - before
print(json.dumps({"seconds": seconds, "modules": len(new),
                  "heavy": sorted({m.split(".")[0] for m in new} & set(sys.argv[2].split(",")))}))
"""


def measure(statement: str, runs: int) -> tuple[float, int, list[str]]:
    """Median seconds, module count and heavy packages of ``import <statement>`` after airflow.sdk."""
    results = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, statement, ",".join(HEAVY)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return (
        statistics.median(r["seconds"] for r in results),
        results[0]["modules"],
        results[0]["heavy"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    base_seconds, base_modules, _ = measure(BASELINE, args.runs)
    print(
        f"{'module (after import airflow.sdk)':58} {'modules':>8} {'median s':>9} {'vs baseline':>12}  heavy"
    )
    for module in MODULES:
        seconds, modules, heavy = measure(module, args.runs)
        print(f"{module:58} {modules:8d} {seconds:9.3f} {seconds / base_seconds:11.2f}x  {heavy or '-'}")
    print(f"{'baseline: import ' + BASELINE:58} {base_modules:8d} {base_seconds:9.3f} {1:11.2f}x")


if __name__ == "__main__":
    main()
