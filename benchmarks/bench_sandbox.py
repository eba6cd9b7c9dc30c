"""Throughput of the SMS Partner sandbox, so it is known never to be the bottleneck of a benchmark.

Starts the sandbox CLI as a subprocess (so the load generator does not share its GIL; pass
``--in-process`` to compare), drives it over loopback keep-alive connections from a pool of threads
with a bounded number of ``stop-sms/add`` and ``me`` requests, and prints requests/s against the
500 req/s target. Then times one ``stop-sms/list`` of a 1,000,000-stop account (server-side build
+ transfer) and the cached repeat.

Run from the repository root::

    .venv/bin/python benchmarks/bench_sandbox.py
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import requests
from _common import API_KEY, REPO_ROOT, SERVER_PIDS, cpu_seconds, sandbox_process

TARGET_RPS = 500.0


@contextmanager
def sandbox_in_process(seed_stops: int) -> Iterator[str]:
    sys.path.insert(0, str(REPO_ROOT))
    from airflow_provider_smspartner.sandbox import SandboxServer

    with SandboxServer(api_key=API_KEY, seed_stops=seed_stops) as sandbox:
        yield sandbox.base_url


def _requests_sender(base_url: str) -> Callable[[str, int], int]:
    session = requests.Session()

    def send(kind: str, index: int) -> int:
        if kind == "add":
            body = {"apiKey": API_KEY, "phoneNumber": f"+3361{index:07d}"}
            return session.post(f"{base_url}/stop-sms/add", json=body, timeout=10).status_code
        return session.get(f"{base_url}/me", params={"apiKey": API_KEY}, timeout=10).status_code

    return send


def _raw_sender(base_url: str) -> Callable[[str, int], int]:
    # http.client costs the client far less CPU than requests, so the server shows more of its speed.
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    headers = {"Content-Type": "application/json"}

    def send(kind: str, index: int) -> int:
        if kind == "add":
            body = json.dumps({"apiKey": API_KEY, "phoneNumber": f"+3361{index:07d}"})
            connection.request("POST", f"{url.path}/stop-sms/add", body=body, headers=headers)
        else:
            connection.request("GET", f"{url.path}/me?apiKey={API_KEY}")
        response = connection.getresponse()
        response.read()
        return response.status

    return send


def drive(
    base_url: str, adds: int, mes: int, threads: int, deadline: float, raw_client: bool = False
) -> tuple[float, Counter[str]]:
    """Send ``adds`` distinct adds and ``mes`` me calls from ``threads`` keep-alive connections."""
    tasks = [("add", index) for index in range(adds)] + [("me", index) for index in range(mes)]
    random.Random(0).shuffle(tasks)
    chunks = [tasks[offset::threads] for offset in range(threads)]
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    start_gate = threading.Barrier(threads + 1)

    def worker(chunk: list[tuple[str, int]]) -> None:
        seen: Counter[str] = Counter()
        send = _raw_sender(base_url) if raw_client else _requests_sender(base_url)
        start_gate.wait()
        for kind, index in chunk:
            if time.monotonic() > deadline:
                seen["skipped (deadline)"] += 1
                continue
            seen[f"{kind} {send(kind, index)}"] += 1
        with lock:
            outcomes.update(seen)

    pool = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
    for thread in pool:
        thread.start()
    start_gate.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    return time.perf_counter() - started, outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adds", type=int, default=5000, help="stop-sms/add requests (default 5000)")
    parser.add_argument("--mes", type=int, default=2000, help="me requests (default 2000)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--list-stops", type=int, default=1_000_000, help="size of the big list; 0 skips it")
    parser.add_argument("--in-process", action="store_true", help="serve from this process (shares the GIL)")
    parser.add_argument(
        "--raw-client", action="store_true", help="load with http.client instead of requests (lighter client)"
    )
    parser.add_argument("--time-limit", type=float, default=120.0, help="stop sending after this many s")
    args = parser.parse_args()
    server = sandbox_in_process if args.in_process else lambda n: sandbox_process(n, startup_timeout=60)
    mode = "in-process" if args.in_process else "subprocess"
    client = "http.client" if args.raw_client else "requests.Session"

    with server(0) as base_url:
        server_cpu_before = cpu_seconds(SERVER_PIDS[-1]) if SERVER_PIDS else None
        elapsed, outcomes = drive(
            base_url, args.adds, args.mes, args.threads, time.monotonic() + args.time_limit, args.raw_client
        )
        server_cpu = cpu_seconds(SERVER_PIDS[-1]) if SERVER_PIDS else None
        listed = requests.get(f"{base_url}/stop-sms/list", params={"apiKey": API_KEY}, timeout=30).json()
    sent = sum(count for key, count in outcomes.items() if not key.startswith("skipped"))
    rps = sent / elapsed
    print(f"sandbox ({mode}), {args.threads} keep-alive {client} client threads, {os.cpu_count()} CPUs")
    print(
        f"  requests: {sent} in {elapsed:.2f} s -> {rps:,.0f} req/s ({rps / TARGET_RPS:.1f}x the 500 req/s target)"
    )
    if server_cpu is not None and server_cpu_before is not None and sent:
        per_request = (server_cpu - server_cpu_before) / sent
        print(
            f"  server CPU: {per_request * 1e6:.0f} us/request -> CPU-bound capacity ~{1 / per_request:,.0f} req/s "
            f"on its one core ({1 / per_request / TARGET_RPS:.1f}x the target); the rest of the time is the client"
        )
    print(f"  outcomes: {dict(sorted(outcomes.items()))}")
    print(f"  list after the run: nbData={listed['nbData']} (expected {args.adds})")
    ok = listed["nbData"] == args.adds and outcomes["add 200"] == args.adds and rps >= TARGET_RPS

    if args.list_stops:
        started = time.perf_counter()
        with server(args.list_stops) as base_url:
            seeded = time.perf_counter() - started
            timings = []
            for _ in range(2):
                started = time.perf_counter()
                response = requests.get(f"{base_url}/stop-sms/list", params={"apiKey": API_KEY}, timeout=120)
                timings.append(time.perf_counter() - started)
            started = time.perf_counter()
            body = response.json()
            parsed = time.perf_counter() - started
        size_mb = len(response.content) / 1e6
        print(f"big list: {args.list_stops:,} stops, body {size_mb:.1f} MB")
        print(f"  sandbox start incl. seeding: {seeded:.2f} s")
        print(f"  first GET stop-sms/list (build + transfer): {timings[0]:.2f} s")
        print(f"  cached GET stop-sms/list (transfer only):   {timings[1]:.2f} s")
        print(f"  client json parse: {parsed:.2f} s; nbData={body['nbData']} rows={len(body['data'])}")
        ok = ok and body["nbData"] == len(body["data"]) == args.list_stops
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
