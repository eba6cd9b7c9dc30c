"""The example DAGs under a real Airflow 3 deployment with CeleryExecutor, on loopback.

One deployment serves the whole module (about 2 minutes on the 2-CPU build machine):

- PostgreSQL metadata database of its own (``airflow_deploy_<hex>``, dropped afterwards) and a
  PostgreSQL warehouse database of its own (``airflow_deploy_<hex>_wh``);
- CeleryExecutor: Redis broker on 127.0.0.1:6379 in database ``SMSPARTNER_DEPLOY_REDIS_DB``
  (default 11) with every key under a prefix of its own, result backend on the metadata DB;
- ``api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and two ``celery worker``
  processes (``--concurrency 4``); log servers are off (``--skip-serve-logs``: they would bind
  0.0.0.0), every other server binds 127.0.0.1;
- the provider as installed in this project's virtualenv, the example DAGs copied to the DAGs
  folder, the SMS Partner sandbox served from the test process (so its counters can be read).

The tests trigger every example DAG through the REST API and check the warehouse rows, the
Asset-triggered run, then the mapped bulk add of 1,200 new numbers: 8 mapped tasks on both
workers sharing one Redis rate budget of 28 requests/s against a sandbox that answers 429 above 30
requests in any sliding second: the budget's own releases, read from Redis, never exceed it, and
the sandbox's count exceeds it only by the jitter between release and arrival (``rate_window``).
Every process started is stopped by pid, even on failure.

Without PostgreSQL or Redis the module is skipped on a laptop and fails when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CONTACTS, PROJECT_ROOT, STOPPED, UNSUBSCRIBES, require_server
from tests.deployment.airflow_deployment import (
    POSTGRES,
    AirflowDeployment,
    celery_env,
    delete_redis_keys,
    psql,
)
from tests.deployment.rate_window import MAX_READ_GAP, ReleaseLog, longest_delay, rate_problems
from tests.helpers import free_port, max_in_window, national, nonzero

pytestmark = [pytest.mark.deployment, pytest.mark.timeout(600)]

API_KEY = "sk-deploy-0123456789abcdef-SECRET"
REDIS_DB = int(os.environ.get("SMSPARTNER_DEPLOY_REDIS_DB", "11"))
REDIS_CONN_ID = "smspartner_deploy_redis"
POOL = "smspartner_api"
POOL_SLOTS = 8
WORKERS = ("worker-1", "worker-2")
WORKER_CONCURRENCY = 4

# The sandbox: STOPPED (conftest) are on the list before the DAGs run (two marketing contacts).
SEEDED_STOPS = 200

# The mapped bulk add: the API's limit, the fleet's shared budget, and what the sandbox may see.
SANDBOX_LIMIT = 30
SANDBOX_LATENCY = 0.05
SHARED_RATE = 28
# Seconds a request may take from its release (Redis) to its arrival at the sandbox on this loaded
# 2-CPU machine: a worker scheduled late sends a few requests bunched up with the next ones.
JITTER_SECONDS = 0.5
# The sandbox answers 429 to what jitter bunches above 30 in a second; each 429 pauses the fleet
# (Retry-After) and is retried, so it costs time, never a number. Without the shared budget most
# requests get one.
MAX_429_FRACTION = 0.02
NEW_NUMBERS = 1200
CHUNK_SIZE = 150  # 1,200 numbers -> 8 mapped tasks

STARTUP_TIMEOUT = 180
RUN_TIMEOUT = 240


def _drop_database(name: str) -> None:
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """How many of the intervals were open at the same moment, at most."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def _new_numbers(count: int, taken: set[str], seed: int = 2026) -> list[str]:
    """``count`` distinct French mobiles not on the list, typed in three formats."""
    import phonenumbers

    rng = random.Random(seed)
    found: set[str] = set()
    while len(found) < count:
        # Not every 06 block is allocated (e.g. 0639, 0690): libphonenumber calls those invalid.
        e164 = f"+336{rng.randrange(10**8):08d}"
        if e164 not in taken and phonenumbers.is_valid_number(phonenumbers.parse(e164)):
            found.add(e164)
    typed = []
    for i, e164 in enumerate(sorted(found)):
        typed.append((e164, national(e164), "0033" + e164[3:])[i % 3])
    return typed


@dataclass
class Deployment:
    """What the tests need: the running Airflow, the sandbox it talks to, the warehouse DB."""

    airflow: AirflowDeployment
    sandbox: Any
    warehouse_db: str
    key_prefix: str
    output_dir: Path

    def warehouse(self, sql: str) -> list[tuple]:
        return psql(sql, self.warehouse_db)

    def run_dags(self, confs: dict[str, dict[str, Any]], timeout: float = RUN_TIMEOUT) -> dict[str, dict]:
        """Unpause and trigger each DAG through the REST API, wait for every run of them, pause them.

        Returns the triggered run of each DAG. Unpausing a scheduled DAG also creates its latest
        scheduled run: those must succeed too.
        """
        triggered = {}
        for dag_id, conf in confs.items():
            self.airflow.set_paused(dag_id, False)
            triggered[dag_id] = self.airflow.trigger(dag_id, conf)
        try:
            runs = {dag_id: self.airflow.wait_for_runs(dag_id, timeout) for dag_id in confs}
        finally:
            for dag_id in confs:
                self.airflow.set_paused(dag_id, True)
        failures = [
            self.airflow.failure_report(dag_id, [r for r in dag_runs if r["state"] != "success"])
            for dag_id, dag_runs in runs.items()
            if any(r["state"] != "success" for r in dag_runs)
        ]
        assert not failures, "\n".join(failures)
        return {
            dag_id: next(r for r in dag_runs if r["dag_run_id"] == triggered[dag_id])
            for dag_id, dag_runs in runs.items()
        }

    def wait_for_asset_runs(self, dag_id: str, timeout: float = RUN_TIMEOUT) -> list[dict[str, Any]]:
        """Wait until every queued Asset event of the DAG became a run and every run finished."""
        airflow = self.airflow

        def settled() -> list[dict[str, Any]] | None:
            if airflow.api("GET", f"/dags/{dag_id}/assets/queuedEvents")["total_entries"]:
                return None
            runs = airflow.dag_runs(dag_id)
            return runs if runs and all(r["state"] in ("success", "failed") for r in runs) else None

        runs = airflow.wait_for(f"the asset-triggered runs of {dag_id} to finish", settled, timeout, 2)
        assert {r["run_type"] for r in runs} == {"asset_triggered"}
        failed = [r for r in runs if r["state"] != "success"]
        assert not failed, airflow.failure_report(dag_id, failed)
        return runs


def _airflow_env(home: Path, base_url: str, meta_db: str, warehouse_db: str, key_prefix: str) -> dict:
    """One environment for every process (``celery_env``: nothing from the test process's Airflow
    settings), with this module's parallelism, worker hostnames, warehouse and Redis connections."""
    return celery_env(
        home,
        base_url,
        meta_db,
        f"redis://127.0.0.1:6379/{REDIS_DB}",
        key_prefix,
        AIRFLOW__CORE__PARALLELISM="32",
        AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG="16",
        # Unpausing a scheduled example also creates its latest scheduled run: one run at a
        # time per DAG keeps that run and the triggered one from writing the same tables at once.
        AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG="1",
        AIRFLOW__CORE__HOSTNAME_CALLABLE="tests.deployment.worker_hostname.hostname",
        AIRFLOW__CELERY__WORKER_CONCURRENCY=str(WORKER_CONCURRENCY),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10",
        AIRFLOW_CONN_WAREHOUSE=json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "login": "postgres",
                "schema": warehouse_db,
            }
        ),
        **{
            "AIRFLOW_CONN_" + REDIS_CONN_ID.upper(): json.dumps(
                {"conn_type": "redis", "host": "127.0.0.1", "port": 6379, "extra": {"db": REDIS_DB}}
            ),
            # tests.deployment.worker_hostname must be importable by every process.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        },
    )


def _create_warehouse(dbname: str) -> None:
    psql(
        "CREATE TABLE marketing_contacts (contact_id INTEGER, phone TEXT, sms_opt_out INTEGER DEFAULT 0);"
        "CREATE TABLE crm_unsubscribes (phone TEXT);",
        dbname,
    )
    import psycopg

    with psycopg.connect(f"postgresql://{POSTGRES}/{dbname}", autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO marketing_contacts (contact_id, phone) VALUES (%s, %s)", CONTACTS)
        cur.executemany("INSERT INTO crm_unsubscribes (phone) VALUES (%s)", [(p,) for p in UNSUBSCRIBES])


def _redis() -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)


def _start(airflow: AirflowDeployment, port: int, key_prefix: str) -> None:
    started = time.monotonic()
    airflow.run("db", "migrate", timeout=300)
    print(f"\nmetadata DB migrated in {time.monotonic() - started:.0f} s", flush=True)
    airflow.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
    airflow.start("scheduler", "scheduler", "--skip-serve-logs")
    airflow.start("dag-processor", "dag-processor")
    airflow.start("triggerer", "triggerer", "--skip-serve-logs")
    for name in WORKERS:
        airflow.start(
            name,
            *("celery", "worker", "--skip-serve-logs", "--concurrency", str(WORKER_CONCURRENCY)),
            *("--celery-hostname", f"{key_prefix}-{name}@%h"),
            env={"SMSPARTNER_DEPLOY_HOSTNAME": name},
        )
    airflow.wait_healthy(STARTUP_TIMEOUT)
    print(f"components healthy after {time.monotonic() - started:.0f} s", flush=True)
    for name in WORKERS:
        log = airflow.home / "logs" / f"{name}.log"
        airflow.wait_for(f"celery {name} to be ready", partial(_says_ready, log), 120)


def _says_ready(log: Path) -> bool:
    """Whether a celery worker's log says it is ready."""
    return " ready." in log.read_text()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_server("PostgreSQL", "127.0.0.1", 5432)
    require_server("Redis", "127.0.0.1", 6379)
    from airflow_provider_smspartner.sandbox import SandboxServer

    started = time.monotonic()
    unique = uuid.uuid4().hex[:10]
    meta_db, warehouse_db = f"airflow_deploy_{unique}", f"airflow_deploy_{unique}_wh"
    key_prefix = f"smspartner-deploy-{unique}"
    home = tmp_path_factory.mktemp("airflow-deploy")
    (home / "dags").mkdir()
    for dag_file in sorted((PROJECT_ROOT / "example_dags").glob("*.py")):
        shutil.copy(dag_file, home / "dags" / dag_file.name)
    output_dir = home / "output"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    airflow = AirflowDeployment(
        home=home, env=_airflow_env(home, base_url, meta_db, warehouse_db, key_prefix), base_url=base_url
    )
    sandbox = SandboxServer(
        api_key=API_KEY,
        seed_stops=SEEDED_STOPS,
        stops=STOPPED,
        latency=SANDBOX_LATENCY,
        rate_limit=SANDBOX_LIMIT,
        seed=12,
    )
    created: list[str] = []
    try:
        for name in (meta_db, warehouse_db):
            psql(f'CREATE DATABASE "{name}"')
            created.append(name)
        _create_warehouse(warehouse_db)
        sandbox.start()
        _start(airflow, port, key_prefix)
        airflow.api("POST", "/pools", {"name": POOL, "slots": POOL_SLOTS, "description": "SMS Partner API"})
        airflow.api(
            "POST",
            "/connections",
            {
                "connection_id": "smspartner_default",
                "conn_type": "smspartner",
                "host": sandbox.base_url,
                "password": API_KEY,
                "extra": json.dumps({"timeout": 10, "max_retries": 5, "retry_backoff": 0.5}),
            },
        )
        print(f"\ndeployment ready in {time.monotonic() - started:.0f} s: {base_url}, home {home}")
        yield Deployment(airflow, sandbox, warehouse_db, key_prefix, output_dir)
    finally:
        killed = airflow.stop()
        sandbox.stop()
        for name in created:
            _drop_database(name)
        delete_redis_keys(REDIS_DB, key_prefix)
        print(f"\ndeployment stopped after {time.monotonic() - started:.0f} s; killed: {killed or 'nothing'}")


def _deployed_dag_ids(airflow: AirflowDeployment) -> set[str]:
    return {d["dag_id"] for d in airflow.api("GET", "/dags", limit=100)["dags"]}


def test_provider_and_example_dags_are_deployed(deployment: Deployment):
    """The provider comes from the project's virtualenv; every example DAG parsed without error."""
    airflow = deployment.airflow
    providers = airflow.api("GET", "/providers", limit=100)["providers"]
    assert "airflow-provider-smspartner" in {p["package_name"] for p in providers}

    expected = {
        "smspartner_stop_list_to_warehouse",
        "smspartner_sync_unsubscribes",
        "crm_unsubscribes_export",
        "smspartner_taskflow_join",
        "smspartner_bulk_add_mapped",
        "smspartner_stop_list_changes",
        "smspartner_campaign_gate",
        "smspartner_stop_list_events",
    }

    def parsed() -> set[str] | None:
        dag_ids = _deployed_dag_ids(airflow)
        return dag_ids if expected <= dag_ids else None

    airflow.wait_for("the example DAGs to be parsed", parsed, 120)
    assert airflow.api("GET", "/importErrors")["import_errors"] == []


def test_stop_list_to_warehouse_and_taskflow_join(deployment: Deployment):
    """Both run green on Celery; the warehouse holds the list and flags the opted-out contacts.

    ``smspartner_stop_list_changes`` runs on the Asset the extract publishes.
    """
    airflow = deployment.airflow
    consumer = "smspartner_stop_list_changes"
    airflow.wait_for(f"{consumer} to be parsed", lambda: consumer in _deployed_dag_ids(airflow), 120)
    airflow.set_paused(consumer, False)
    try:
        deployment.run_dags(
            {
                "smspartner_taskflow_join": {"output_dir": str(deployment.output_dir)},
                "smspartner_stop_list_to_warehouse": {},
            }
        )
        deployment.wait_for_asset_runs(consumer)
    finally:
        airflow.set_paused(consumer, True)

    listed = SEEDED_STOPS + len(STOPPED)
    landed = deployment.warehouse("SELECT COUNT(*) FROM smspartner_stop_list WHERE removed_at IS NULL")
    assert landed[0][0] == len(deployment.sandbox.state) == listed
    flagged = deployment.warehouse(
        "SELECT contact_id FROM marketing_contacts WHERE sms_opt_out = 1 ORDER BY 1"
    )
    assert flagged == [(1,), (2,)]
    # The TaskFlow DAG joins its built-in sample contacts (Alice and Bruno are STOPPED) to the list.
    safe = (deployment.output_dir / "contacts_safe_to_text.csv").read_text()
    assert "+33781223344" in safe
    assert not [number for number in STOPPED if number in safe]
    # Two extracts ran (the scheduled one and the triggered one): only the first inserted stops.
    inserted = deployment.warehouse("SELECT SUM(inserted) FROM smspartner_stop_list_changes")
    assert inserted[0][0] == listed


def test_asset_triggered_sync(deployment: Deployment):
    """The export's Asset event starts the sync DAG, which adds each new unsubscribe exactly once."""
    airflow = deployment.airflow
    sync = "smspartner_sync_unsubscribes"
    airflow.set_paused(sync, False)
    try:
        deployment.run_dags({"crm_unsubscribes_export": {}})
        runs = deployment.wait_for_asset_runs(sync)
    finally:
        airflow.set_paused(sync, True)

    rows = deployment.warehouse(
        "SELECT run_id, status, COUNT(*) FROM smspartner_add_results "
        "WHERE dag_id = 'smspartner_sync_unsubscribes' GROUP BY run_id, status"
    )
    by_run: dict[str, dict[str, int]] = {}
    for run_id, status, count in rows:
        by_run.setdefault(run_id, {})[status] = count
    first = runs[0]["dag_run_id"]
    assert by_run[first] == {"added": 2, "duplicate": 1, "skipped_existing": 1, "invalid": 1}
    # A second export event (the run created on unpause) may start the sync again: it adds nothing.
    assert sum(statuses.get("added", 0) for statuses in by_run.values()) == 2
    assert all(sum(statuses.values()) == len(UNSUBSCRIBES) for statuses in by_run.values())
    assert {"+33655443322", "+41791234567"} <= deployment.sandbox.state.phone_numbers()


def test_campaign_gate(deployment: Deployment):
    """The gate checks the audience against the live list and writes the safe rows and the audit row
    in the PostgreSQL warehouse."""
    deployment.run_dags({"smspartner_campaign_gate": {}})
    assert deployment.warehouse("SELECT contact_id, phone_e164 FROM campaign_audience_safe") == [
        (3, "+33611111111")
    ]
    excluded = deployment.warehouse("SELECT contact_id, reason FROM campaign_audience_excluded ORDER BY 1")
    assert excluded == [(1, "stopped"), (2, "stopped"), (4, "invalid")]
    audit = deployment.warehouse(
        "SELECT mode, audience, kept, stopped, invalid, output FROM smspartner_suppression_audit"
    )
    assert audit == [("filter", 4, 1, 2, 1, "campaign_audience_safe")]


def _sandbox_stats(sandbox: Any) -> dict[str, Any]:
    """What the sandbox saw since its last reset, from its own ``GET /_sandbox/stats``."""
    with urllib.request.urlopen(f"{sandbox.url}/_sandbox/stats", timeout=10) as response:
        return json.load(response)


def test_mapped_bulk_add_shares_one_rate_limit(deployment: Deployment):
    """1,200 new numbers in 8 mapped tasks on both workers stay under the API's limit together."""
    airflow, sandbox = deployment.airflow, deployment.sandbox
    inputs = _new_numbers(NEW_NUMBERS, sandbox.state.phone_numbers())
    deployment.warehouse("DELETE FROM crm_unsubscribes")
    import psycopg

    with psycopg.connect(f"postgresql://{POSTGRES}/{deployment.warehouse_db}", autocommit=True) as conn:
        conn.cursor().executemany("INSERT INTO crm_unsubscribes (phone) VALUES (%s)", [(p,) for p in inputs])
    airflow.api(
        "PATCH",
        "/connections/smspartner_default",
        {
            "connection_id": "smspartner_default",
            "conn_type": "smspartner",
            "extra": json.dumps(
                {
                    "timeout": 10,
                    "max_retries": 5,
                    "retry_backoff": 0.5,
                    "requests_per_second": SHARED_RATE,
                    "rate_limit_redis_conn_id": REDIS_CONN_ID,
                    "rate_limit_key": f"{deployment.key_prefix}:smspartner",
                }
            ),
        },
        update_mask="extra",
    )
    listed_before = len(sandbox.state)
    sandbox.reset_stats()
    started = time.monotonic()
    with ReleaseLog(_redis(), f"{deployment.key_prefix}:smspartner") as log:
        run = deployment.run_dags({"smspartner_bulk_add_mapped": {"chunk_size": CHUNK_SIZE}})[
            "smspartner_bulk_add_mapped"
        ]
    elapsed = time.monotonic() - started
    run_id = run["dag_run_id"]

    # At least 8 mapped tasks, all running at once, on both workers.
    chunks = [
        ti
        for ti in airflow.task_instances("smspartner_bulk_add_mapped", run_id)
        if ti["task_id"] == "add_chunk"
    ]
    assert len(chunks) >= 8
    assert {ti["hostname"] for ti in chunks} == set(WORKERS)
    spans = [
        (datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"])) for ti in chunks
    ]
    assert _max_overlap(spans) >= 8

    # What the provider controls: the fleet's releases (Redis clock) never exceeded the budget.
    # What the sandbox saw (GET /_sandbox/stats, and each arrival, on the same host's clock): those
    # releases, late by at most JITTER_SECONDS.
    served = _sandbox_stats(sandbox)
    requests = served["requests_total"]
    to_wall = time.time() - time.monotonic()
    arrivals = [t + to_wall for t, _ in sandbox.stats.timestamps]
    releases = log.releases
    summary = (
        f"{requests} requests in {elapsed:.0f} s; busiest second: {max_in_window(releases)} released, "
        f"{served['busiest_second']} at the sandbox; longest release-to-arrival delay "
        f"{longest_delay(releases, arrivals):.3f} s; statuses {served['status_counts']}"
    )
    print(f"\nmapped bulk add: {summary}", flush=True)
    assert requests >= NEW_NUMBERS, summary
    assert log.longest_gap < MAX_READ_GAP and len(releases) >= requests, (
        f"the releases were not all read ({len(releases)} read, longest gap {log.longest_gap:.2f} s); {summary}"
    )
    assert rate_problems(releases, arrivals, SHARED_RATE, JITTER_SECONDS, served["busiest_second"]) == [], (
        summary
    )
    assert served["rate_limited"] <= MAX_429_FRACTION * requests, summary
    assert served["adds_applied"] == NEW_NUMBERS, summary

    # Every number on the list exactly once; every input accounted for exactly once.
    listed = sandbox.state.phone_numbers()
    expected = {"+33" + number.replace(" ", "")[-9:] for number in inputs}
    assert len(expected) == NEW_NUMBERS
    assert expected <= listed
    assert len(sandbox.state) == listed_before + NEW_NUMBERS
    summaries = [
        airflow.xcom("smspartner_bulk_add_mapped", run_id, "add_chunk", ti["map_index"]) for ti in chunks
    ]
    assert sum(s["total"] for s in summaries) == NEW_NUMBERS
    for s in summaries:
        assert (
            sum(v for k, v in s.items() if k not in ("total", "results_table") and isinstance(v, int))
            == s["total"]
        )
    statuses: Counter[str] = Counter()
    for s in summaries:
        statuses.update(nonzero(s))
    assert statuses == {"added": NEW_NUMBERS}
    rows = deployment.warehouse(
        "SELECT COUNT(DISTINCT (map_index, input_row)) FROM smspartner_add_results "
        f"WHERE dag_id = 'smspartner_bulk_add_mapped' AND run_id = '{run_id}'"
    )
    assert rows[0][0] == NEW_NUMBERS


def test_every_example_dag_ran(deployment: Deployment):
    """Each DAG of the example folder has at least one successful run in this deployment."""
    airflow = deployment.airflow
    examples = {d["dag_id"] for d in airflow.api("GET", "/dags", limit=100, tags="example")["dags"]}
    assert len(examples) >= 5
    # Scheduled by its Asset's watcher: it runs, with a triggerer, in test_trigger_deployment.py.
    examples.discard("smspartner_stop_list_events")
    never_ran = sorted(
        dag_id for dag_id in examples if not any(r["state"] == "success" for r in airflow.dag_runs(dag_id))
    )
    assert never_ran == []
