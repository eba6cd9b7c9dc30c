"""Fleet benchmark (issue 12): several worker processes share one API budget, or do not.

4 and 8 processes (as mapped tasks on Celery or Local executor workers would be) each run
``SmsPartnerAddStopsOperator`` on a disjoint chunk of 5,000 new numbers in all, against one
sandbox limited to 200 requests/s (sliding one-second window, HTTP 429 with ``Retry-After: 1``)
with 50 ms latency. Every process has the same connection, ``requests_per_second`` 190 (5 %
under the limit, as one sets it for a real API: requests are spaced 2 % under that again, and the
rest absorbs the jitter between a request's release and its arrival, which reaches tens of ms on
a busy 2-core machine running 9 processes):

- ``per-process``: without ``rate_limit_redis_conn_id``, each process has its own 190/s;
- ``shared``: with it, the 190/s are one budget for the fleet, through Redis (127.0.0.1:6379).

For each run it prints the fleet rate (adds applied over the span of add requests, as the sandbox
saw them) as a fraction of the limit, the 429s, the busiest sliding second the sandbox saw (its
``GET /_sandbox/stats``), failed numbers and the warning lines each task logged. Target with the
shared limit: >= 0.9 of the limit, 429s <= 0.5 % of add requests, busiest second <= the limit.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_fleet.py
    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_fleet.py --processes 8 --modes shared
    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_fleet.py --modes shared --requests-per-second 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import requests
from _common import API_KEY, REPO_ROOT, sandbox_process

LIMIT = 200
LATENCY_MS = 50
TOTAL = 5_000
REDIS_DB = 12
REDIS_CONN_ID = "bench_fleet_redis"


# ----------------------------------------------------------------------------------- worker
def worker(args: dict[str, Any]) -> None:
    """One process of the fleet: ready once Airflow and the hook are loaded, adds on "go"."""
    from airflow_provider_smspartner.operators.smspartner import SmsPartnerAddStopsOperator

    operator = SmsPartnerAddStopsOperator(
        task_id=f"add_{args['index']}",
        phone_numbers=args["numbers"],
        max_workers=args["threads"],
        smspartner_conn_id="smspartner_fleet",
    )
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    summary = operator.execute(context={})
    print(json.dumps({"summary": summary, "seconds": time.monotonic() - started}), flush=True)


# ----------------------------------------------------------------------------------- driver
def connection(base_url: str, shared: bool, key: str, max_retries: int, rate: float) -> str:
    extra: dict[str, Any] = {"requests_per_second": rate, "max_retries": max_retries, "timeout": 10}
    if shared:
        extra.update(rate_limit_redis_conn_id=REDIS_CONN_ID, rate_limit_key=key)
    return json.dumps({"conn_type": "smspartner", "host": base_url, "password": API_KEY, "extra": extra})


def run_fleet(
    base_url: str, processes: int, shared: bool, threads: int, max_retries: int, offset: int, rate: float
) -> dict[str, Any]:
    key = f"bench-fleet-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["AIRFLOW_CONN_SMSPARTNER_FLEET"] = connection(base_url, shared, key, max_retries, rate)
    env[f"AIRFLOW_CONN_{REDIS_CONN_ID.upper()}"] = json.dumps(
        {"conn_type": "redis", "host": "127.0.0.1", "port": 6379, "extra": {"db": REDIS_DB}}
    )
    # Warnings and errors only: what is left is what a task log would show as trouble.
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    numbers = [f"+3361{offset + i:07d}" for i in range(TOTAL)]
    chunks = [numbers[i::processes] for i in range(processes)]
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                json.dumps({"index": i, "numbers": chunk, "threads": threads}),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, chunk in enumerate(chunks)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            for line in child.stdout:  # Airflow may print before the worker is ready
                if line.strip() == "ready":
                    break
            else:
                raise RuntimeError(f"a worker exited before it was ready ({child.wait()})")
        requests.post(f"{base_url.removesuffix('/v1')}/_sandbox/stats/reset", timeout=10)
        started = time.monotonic()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=900)[0] for child in children]
        wall = time.monotonic() - started
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        if shared:
            import redis

            client = redis.Redis(port=6379, db=REDIS_DB)
            client.delete(*(f"{{{key}}}:{part}" for part in ("schedule", "pause", "window")))
            client.close()
    stats = requests.get(f"{base_url.removesuffix('/v1')}/_sandbox/stats", timeout=10).json()
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    # The provider's own warning lines (retry summaries); Airflow adds one of its own for an
    # execute() outside a task runner.
    warnings = [
        sum(1 for line in out.splitlines() if "warning" in line.lower() and "SMS Partner '" in line)
        for out in outputs
    ]
    return {"stats": stats, "results": results, "warnings": warnings, "wall": wall}


def report(processes: int, shared: bool, rate_setting: float, run: dict[str, Any]) -> bool:
    stats, results = run["stats"], run["results"]
    adds = stats["requests_by_endpoint"].get("stop-sms/add", 0)
    span = stats["active_seconds_by_endpoint"].get("stop-sms/add", 0.0) or float("nan")
    applied = stats["adds_applied"]
    rate = applied / span
    limited = stats["status_counts"].get("429", 0)
    added = sum(r["summary"].get("added", 0) for r in results)
    failed = sum(r["summary"].get("failed", 0) for r in results)
    share = limited / adds if adds else 0.0
    fraction = rate / LIMIT
    mode = f"{'shared limit (Redis)' if shared else 'per-process throttle'} at {rate_setting:g}/s"
    met = fraction >= 0.9 and share <= 0.005 and stats["busiest_second"] <= LIMIT
    verdict = f"; targets {'met' if met else 'NOT met'}" if shared else ""
    print(
        f"{processes} processes, {mode}: {applied:,} adds applied ({added:,} reported added, "
        f"{failed:,} failed) in {span:.1f} s; fleet rate {rate:.1f}/s = {fraction:.2f} of the "
        f"{LIMIT}/s limit; {limited:,} x 429 ({share:.2%} of {adds:,} add requests); busiest second "
        f"{stats['busiest_second']} (limit {LIMIT}); provider warning lines per task: max {max(run['warnings'])}"
        f"{verdict}",
        flush=True,
    )
    return met or not shared


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, nargs="+", default=[4, 8])
    parser.add_argument(
        "--modes", nargs="+", choices=["per-process", "shared"], default=["per-process", "shared"]
    )
    parser.add_argument(
        "--threads", type=int, default=16, help="operator max_workers per process (default 16)"
    )
    parser.add_argument("--max-retries", type=int, default=8)
    parser.add_argument(
        "--requests-per-second", type=float, default=190, help="the connection's rate (default 190)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    ok = True
    extra = ["--rate-limit", str(LIMIT), "--latency-ms", str(LATENCY_MS)]
    with sandbox_process(0, extra_args=extra) as base_url:
        offset = 0
        for processes in args.processes:
            for mode in args.modes:
                shared = mode == "shared"
                rate = args.requests_per_second
                run = run_fleet(base_url, processes, shared, args.threads, args.max_retries, offset, rate)
                offset += TOTAL
                ok = report(processes, shared, rate, run) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
