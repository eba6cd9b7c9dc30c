"""Bulk add benchmark: SmsPartnerAddStopsOperator against the sandbox (50 ms latency, 200 requests/s limit).

(a) 5,000 new numbers, hook throttle 200/s (the hook spaces requests 2% under it): achieved add rate as
    a fraction of the limit, 429s received, and the ratio against a naive sequential loop (one
    ``requests.post`` per number, same sandbox, same run; a sample is timed and extrapolated).
    Run without a results table and with one written as the run goes (``--results``: SQLite file,
    PostgreSQL), interleaved (``--repeat``), so one invocation compares them within its own spread.
(b) 1,000 numbers with throttle 25/s: the most requests in any 1-second window (from the
    sandbox's request timestamps) and the 429s received.
(c) 100,000 inputs of which 99% are already on the list (seeded with ``stops=``): add calls made
    and total time (throttle: the last of ``--throttles``).

By default the sandbox (``SandboxServer``) runs in a child process, so it does not share the
operator's GIL on a 2-core machine, and reports its request log back through a pipe;
``--sandbox inline`` runs it in this process for comparison. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_bulk_add.py
    .venv/bin/python benchmarks/bench_bulk_add.py --sandbox inline --only a
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

# Before airflow is imported: the operator's per-phase INFO lines would drown the figures.
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")

import requests

API_KEY = "bench-key"
LATENCY = 0.050
LIMIT = 200.0


# ----------------------------------------------------------------------------------- sandbox
def _serve(pipe: Connection, kwargs: dict[str, Any]) -> None:
    """Child process: run a sandbox, answer ``stats`` requests until told to stop."""
    from airflow_provider_smspartner.sandbox import SandboxServer

    with SandboxServer(api_key=API_KEY, **kwargs) as sandbox:
        pipe.send(sandbox.base_url)
        while pipe.recv() == "stats":
            pipe.send(_stats(sandbox))


def _stats(sandbox: Any) -> dict[str, Any]:
    return {
        "adds": sandbox.stats.count("stop-sms/add"),
        "lists": sandbox.stats.count("stop-sms/list"),
        "rate_limited": sandbox.stats.rate_limited,
        "add_times": [t for t, endpoint in sandbox.stats.timestamps if endpoint == "stop-sms/add"],
    }


class Sandbox:
    """A sandbox in a child process (``inline=False``) or in this one; ``stats()`` either way."""

    def __init__(self, inline: bool, **kwargs: Any) -> None:
        self.inline, self.kwargs = inline, {"latency": LATENCY, "rate_limit": LIMIT, **kwargs}

    @contextmanager
    def run(self) -> Iterator[Sandbox]:
        if self.inline:
            from airflow_provider_smspartner.sandbox import SandboxServer

            with SandboxServer(api_key=API_KEY, **self.kwargs) as server:
                self.base_url, self.stats = server.base_url, lambda: _stats(server)
                yield self
            return
        parent, child = multiprocessing.get_context("spawn").Pipe()
        process = multiprocessing.get_context("spawn").Process(target=_serve, args=(child, self.kwargs))
        process.start()
        try:
            self.base_url = parent.recv()

            def stats() -> dict[str, Any]:
                parent.send("stats")
                return parent.recv()

            self.stats = stats
            yield self
        finally:
            parent.send("stop")
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()

    def where(self) -> str:
        return "in-process" if self.inline else "child process"


# ----------------------------------------------------------------------------------- helpers
def use_connection(conn_id: str, base_url: str, requests_per_second: float) -> None:
    """Define ``conn_id`` in the environment (one per run, so no throttle is shared)."""
    extra = {"requests_per_second": requests_per_second, "max_retries": 5, "timeout": 10}
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
        {"conn_type": "smspartner", "host": base_url, "password": API_KEY, "extra": extra}
    )


def numbers(count: int, prefix: str) -> list[str]:
    """``count`` distinct French mobile numbers in E.164 (``prefix`` = ``+336`` + 2 digits)."""
    return [f"{prefix}{i:06d}" for i in range(count)]


#: Results databases of (a): name -> Airflow connection (SQLite in a temporary file).
RESULTS_CONNECTIONS = {
    "sqlite": {"conn_type": "sqlite", "host": os.path.join(tempfile.gettempdir(), "bench_bulk_results.db")},
    "postgres": {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "login": "postgres",
        "schema": "test",
    },
}


def run_operator(
    base_url: str, phone_numbers: list[str], throttle: float, workers: int, results: str | None = None
) -> tuple[dict[str, Any], float]:
    """Run the add operator; return its summary and its wall time (list fetch, diff and results
    table included). With ``results``, one row per input is written while the run goes to a fresh
    table on that database, dropped afterwards."""
    from airflow_provider_smspartner.operators.smspartner import SmsPartnerAddStopsOperator

    conn_id = f"bench_{int(throttle * 1000)}_{time.monotonic_ns()}"
    use_connection(conn_id, base_url, throttle)
    table_args: dict[str, Any] = {}
    if results:
        os.environ[f"AIRFLOW_CONN_BENCH_RESULTS_{results.upper()}"] = json.dumps(RESULTS_CONNECTIONS[results])
        table_args = {
            "results_table": f"bench_results_{uuid.uuid4().hex[:8]}",
            "results_conn_id": f"bench_results_{results}",
        }
    op = SmsPartnerAddStopsOperator(
        task_id="bench",
        phone_numbers=phone_numbers,
        max_workers=workers,
        smspartner_conn_id=conn_id,
        **table_args,
    )
    started = time.perf_counter()
    try:
        summary = op.execute(context={})
        return summary, time.perf_counter() - started
    finally:
        if results:
            from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook

            resolve_dbapi_hook(table_args["results_conn_id"]).run(
                f"DROP TABLE IF EXISTS {table_args['results_table']}"
            )


def naive_rate(base_url: str, phone_numbers: list[str]) -> float:
    """Requests per second of the loop a user would write first: one ``requests.post`` per number."""
    started = time.perf_counter()
    for phone in phone_numbers:
        requests.post(f"{base_url}/stop-sms/add", json={"apiKey": API_KEY, "phoneNumber": phone}, timeout=10)
    return len(phone_numbers) / (time.perf_counter() - started)


def max_in_window(timestamps: list[float], seconds: float = 1.0) -> int:
    """The most timestamps in any window of ``seconds``."""
    stamps = sorted(timestamps)
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


# ----------------------------------------------------------------------------------- scenarios
def scenario_a(
    inline: bool,
    count: int,
    sample: int,
    workers: int,
    throttles: list[float],
    results: list[str],
    repeat: int,
) -> None:
    naive = 0.0
    for i, throttle in enumerate(throttles):
        rates: dict[str, list[float]] = {}
        for round_ in range(repeat):
            for kind in results:
                sandbox = Sandbox(inline)
                with sandbox.run():
                    phones = numbers(count, f"+3361{i}")
                    summary, seconds = run_operator(
                        sandbox.base_url, phones, throttle, workers, None if kind == "none" else kind
                    )
                    stats = sandbox.stats()
                    if i == 0 and round_ == 0 and not naive:
                        naive = naive_rate(sandbox.base_url, numbers(sample, "+33620"))
                rate = summary["added"] / seconds
                rates.setdefault(kind, []).append(rate)
                print(
                    f"(a) results {kind:8s}: {summary['added']:,} adds in {seconds:.1f} s: {rate:.1f} req/s = "
                    f"{rate / LIMIT:.2f} of the {LIMIT:.0f}/s limit (throttle {throttle:g}/s, {workers} workers, "
                    f"{stats['rate_limited']} x 429, {stats['adds']:,} requests, failed {summary['failed']}, "
                    f"sandbox {sandbox.where()}); naive sequential loop: {naive:.1f} req/s (timed on "
                    f"{sample:,} numbers, extrapolated to {count / naive:.0f} s for {count:,}) -> {rate / naive:.1f}x",
                    flush=True,
                )
        if len(rates) > 1:
            spread = ", ".join(
                f"{kind} {min(r) / LIMIT:.2f}-{max(r) / LIMIT:.2f}"
                if len(r) > 1
                else f"{kind} {r[0] / LIMIT:.2f}"
                for kind, r in rates.items()
            )
            print(
                f"(a) throttle {throttle:g}/s, fraction of the limit per results table: {spread}", flush=True
            )


def scenario_b(inline: bool, count: int, workers: int, throttle: float = 25.0) -> None:
    sandbox = Sandbox(inline)
    with sandbox.run():
        summary, seconds = run_operator(sandbox.base_url, numbers(count, "+33630"), throttle, workers)
        stats = sandbox.stats()
    times = stats["add_times"]
    print(
        f"(b) {summary['added']:,} adds in {seconds:.1f} s at throttle {throttle:g}/s: {summary['added'] / seconds:.1f} "
        f"req/s on average; at most {max_in_window(times)} requests in any 1-second window and "
        f"{max_in_window(times, 10.0) / 10:.1f}/s over any 10-second window; {stats['rate_limited']} x 429",
        flush=True,
    )


def scenario_c(inline: bool, inputs: int, workers: int, throttle: float, listed_share: float = 0.99) -> None:
    phones = numbers(inputs, "+33640")
    listed = int(inputs * listed_share)
    # National and E.164 forms mixed, as a CRM export would have them.
    values = [f"0{p[3:]}" if i % 2 else p for i, p in enumerate(phones)]
    sandbox = Sandbox(inline, stops=phones[:listed])
    with sandbox.run():
        summary, seconds = run_operator(sandbox.base_url, values, throttle, workers)
        stats = sandbox.stats()
    new = inputs - listed
    print(
        f"(c) {inputs:,} inputs, {listed:,} already listed: {stats['adds']:,} add calls (target {new:,}), "
        f"{stats['lists']} list call, {stats['rate_limited']} x 429; total {seconds:.1f} s, of which "
        f"~{new / throttle:.1f} s are the adds at throttle {throttle:g}/s (skipped_existing="
        f"{summary['skipped_existing']:,}, added={summary['added']:,})",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--sandbox", choices=("process", "inline"), default="process", help="where the sandbox runs"
    )
    parser.add_argument("--numbers", type=int, default=5_000, help="new numbers in (a)")
    parser.add_argument("--naive-sample", type=int, default=300, help="numbers the naive loop sends in (a)")
    parser.add_argument(
        "--throttles", default="200", help="hook throttles tried in (a), requests/s, comma-separated"
    )
    parser.add_argument("--throttled-numbers", type=int, default=1_000, help="numbers in (b)")
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs in (c)")
    parser.add_argument("--workers", type=int, default=16, help="max_workers of the operator")
    parser.add_argument(
        "--results",
        default="none,sqlite,postgres",
        help="results tables compared in (a): none, sqlite, postgres (comma-separated)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of (a) over the --results variants")
    parser.add_argument("--only", choices=("a", "b", "c"), help="run one scenario")
    args = parser.parse_args(argv)
    inline = args.sandbox == "inline"
    print(
        f"Sandbox: {LATENCY * 1000:.0f} ms latency, {LIMIT:.0f} requests/s limit (sliding 1 s window; 429 with "
        f"Retry-After: 1 above it); Python {sys.version.split()[0]}, {os.cpu_count()} CPUs",
        flush=True,
    )
    throttles = [float(t) for t in args.throttles.split(",")]
    if args.only in (None, "a"):
        results = [r.strip() for r in args.results.split(",") if r.strip()]
        scenario_a(inline, args.numbers, args.naive_sample, args.workers, throttles, results, args.repeat)
    if args.only in (None, "b"):
        scenario_b(inline, args.throttled_numbers, args.workers)
    if args.only in (None, "c"):
        scenario_c(inline, args.inputs, args.workers, throttles[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
