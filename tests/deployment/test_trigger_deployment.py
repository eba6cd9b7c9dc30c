"""The event-driven extract under a real Airflow 3 deployment: ``SmsPartnerStopListTrigger`` in the
triggerer, CeleryExecutor (issue 21, item 3).

One deployment serves the module (about 3.5 minutes on the 2-CPU build machine):

- PostgreSQL metadata database of its own (``airflow_events_<hex>``) and PostgreSQL warehouse
  database of its own (``airflow_events_<hex>_wh``), both dropped afterwards;
- ``api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` and one ``celery worker``, Redis
  broker on 127.0.0.1:6379 (database ``SMSPARTNER_DEPLOY_REDIS_DB``, default 11) with every key
  under a prefix of its own; every server on a free loopback port, log servers off;
- the example DAG ``smspartner_stop_list_events`` as shipped, polling every 5 s
  (``SMSPARTNER_EXAMPLE_POLL_INTERVAL``): the watcher's event starts ``read_event`` ->
  ``extract_stop_list`` (upsert into ``smspartner_stop_list``) -> ``refresh_suppressed_audience``;
- the SMS Partner sandbox served from the test process (STOPs are added through its API, and its
  counters tell when the trigger polled).

The tests: the first poll after unpausing finds the copy stale and one run fills it; 6 poll
intervals of an unchanged list (7 polls) start nothing; 5 STOPs added one after another each reach
the warehouse table within 60 s (latency = the add's answer -> the row visible, the table read
every 0.5 s); a STOP added just before the triggerer is killed (SIGKILL to every process of it, by
pid) and started again still reaches the table, within 60 s + the dead triggerer's heartbeat
threshold (30 s) + the restart. The figures (median and max latency, the restart case) are printed
and written to ``latencies.json`` in the deployment's home: ``make deployment PYTEST_ARGS="-s
tests/deployment/test_trigger_deployment.py"``.

Without PostgreSQL or Redis the module is skipped on a laptop and fails when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import CONTACTS, PROJECT_ROOT, STOPPED, require_server
from tests.deployment.airflow_deployment import AirflowDeployment, celery_env, delete_redis_keys, psql
from tests.helpers import free_port

pytestmark = [pytest.mark.deployment, pytest.mark.timeout(600)]

API_KEY = "sk-events-0123456789abcdef-SECRET"
DAG_ID = "smspartner_stop_list_events"
DAG_FILE = PROJECT_ROOT / "example_dags" / f"{DAG_ID}.py"
ASSET = "smspartner_live_stop_list"
TABLE = "smspartner_stop_list"
POOL = "smspartner_api"
REDIS_DB = int(os.environ.get("SMSPARTNER_DEPLOY_REDIS_DB", "11"))
SEEDED_STOPS = 50

POLL_INTERVAL = 5
#: A STOP must reach the warehouse table within this many seconds of its add.
MAX_LATENCY = 60.0
#: The quiet window watches at least this many polls of an unchanged list.
QUIET_POLLS = 6
CHANGES = 5
#: ``[triggerer] triggerer_health_check_threshold`` (Airflow's default, set here so the allowance
#: below cannot drift): a killed triggerer keeps its triggers until its last heartbeat is this old;
#: only then does another triggerer take them over.
HEARTBEAT_THRESHOLD = 30
#: How often the warehouse table is read while a STOP is on its way.
ROW_EVERY = 0.5

STARTUP_TIMEOUT = 180
RUN_TIMEOUT = 180


def _new_numbers() -> Iterator[str]:
    """French mobiles of the 0670 block (valid for libphonenumber and the sandbox), in order."""
    return (f"+3367010{i:04d}" for i in range(10_000))


@dataclass
class Events:
    """The running deployment, the sandbox it polls, the warehouse, and the figures measured."""

    airflow: AirflowDeployment
    sandbox: Any
    meta_db: str
    warehouse_db: str
    figures: dict[str, Any] = field(default_factory=dict)
    _numbers: Iterator[str] = field(default_factory=_new_numbers)

    def warehouse(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return psql(sql, self.warehouse_db, params or None)

    def metadata(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return psql(sql, self.meta_db, params or None)

    def add_stop(self) -> tuple[str, int]:
        """Add a new number to the list through the sandbox's API; return it and its stop id."""
        phone = next(number for number in self._numbers if number not in self.sandbox.state)
        request = urllib.request.Request(
            f"{self.sandbox.base_url}/stop-sms/add",
            data=json.dumps({"apiKey": API_KEY, "phoneNumber": phone}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
        assert answer.get("success") is True, answer
        return phone, int(answer["stopId"])

    def wait_for_row(self, stop_id: int, added: float, timeout: float) -> float:
        """Seconds from ``added`` (monotonic) until ``stop_id`` is on the table's list."""
        sql = f"SELECT phone_e164 FROM {TABLE} WHERE stop_id = %s AND removed_at IS NULL"

        def landed() -> float | None:
            return time.monotonic() - added if self.warehouse(sql, stop_id) else None

        return self.airflow.wait_for(f"stop {stop_id} in {TABLE}", landed, timeout, every=ROW_EVERY)

    def runs(self) -> list[dict[str, Any]]:
        return self.airflow.dag_runs(DAG_ID)

    def settled(self, timeout: float = RUN_TIMEOUT) -> list[dict[str, Any]]:
        """Wait until no Asset event waits for a run and every run finished; all must have
        succeeded. Returns the runs, oldest first."""
        airflow = self.airflow

        def done() -> list[dict[str, Any]] | None:
            if airflow.api("GET", f"/dags/{DAG_ID}/assets/queuedEvents")["total_entries"]:
                return None
            runs = self.runs()
            return runs if runs and all(r["state"] in ("success", "failed") for r in runs) else None

        runs = airflow.wait_for(f"the runs of {DAG_ID} to finish", done, timeout, every=1)
        failed = [r for r in runs if r["state"] != "success"]
        assert not failed, airflow.failure_report(DAG_ID, failed)
        assert {r["run_type"] for r in runs} == {"asset_triggered"}
        return runs

    def events(self) -> list[datetime]:
        """When each event of the watched Asset was recorded (metadata database), oldest first."""
        rows = self.metadata(
            "SELECT e.timestamp FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = %s ORDER BY e.timestamp",
            ASSET,
        )
        return [row[0] for row in rows]

    def list_polls(self, since: float) -> list[float]:
        """When the sandbox received each ``stop-sms/list`` call since ``since`` (monotonic)."""
        return [
            t for t, endpoint in self.sandbox.stats.timestamps if t >= since and endpoint == "stop-sms/list"
        ]


def _start(airflow: AirflowDeployment, port: int, key_prefix: str) -> None:
    airflow.run("db", "migrate", timeout=300)
    airflow.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
    airflow.start("scheduler", "scheduler", "--skip-serve-logs")
    airflow.start("dag-processor", "dag-processor")
    airflow.start("triggerer", "triggerer", "--skip-serve-logs")
    airflow.start(
        "worker",
        *("celery", "worker", "--skip-serve-logs", "--concurrency", "4"),
        *("--celery-hostname", f"{key_prefix}-worker@%h"),
    )
    airflow.wait_healthy(STARTUP_TIMEOUT)
    log = airflow.service("worker").log_path
    airflow.wait_for("the celery worker to be ready", lambda: " ready." in log.read_text(), 120)


def _unpause(airflow: AirflowDeployment) -> None:
    """Unpause the DAG and have its file parsed again: the watcher's trigger is registered when a
    parse finds the DAG unpaused, not when it is unpaused."""
    airflow.wait_for(
        f"{DAG_ID} to be parsed",
        lambda: DAG_ID in {d["dag_id"] for d in airflow.api("GET", "/dags", limit=100)["dags"]},
        120,
    )
    airflow.set_paused(DAG_ID, False)
    file_token = airflow.api("GET", f"/dags/{DAG_ID}/details")["file_token"]
    airflow.api("PUT", f"/parseDagFile/{file_token}")


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Events]:
    """The deployment, with the DAG unpaused and its first run (the copy is stale at start) done."""
    require_server("PostgreSQL", "127.0.0.1", 5432)
    require_server("Redis", "127.0.0.1", 6379)
    from airflow_provider_smspartner.sandbox import SandboxServer

    started = time.monotonic()
    unique = uuid.uuid4().hex[:10]
    meta_db, warehouse_db = f"airflow_events_{unique}", f"airflow_events_{unique}_wh"
    key_prefix = f"smspartner-events-{unique}"
    home = tmp_path_factory.mktemp("airflow-events")
    (home / "dags").mkdir()
    shutil.copy(DAG_FILE, home / "dags" / DAG_FILE.name)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    sandbox = SandboxServer(api_key=API_KEY, seed_stops=SEEDED_STOPS, stops=STOPPED, seed=21)
    sandbox.start()
    connections = {
        "warehouse": {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "login": "postgres",
            "schema": warehouse_db,
        },
        "smspartner_default": {
            "conn_type": "smspartner",
            "host": sandbox.base_url,
            "password": API_KEY,
            "extra": {"timeout": 10, "max_retries": 3, "retry_backoff": 0.5},
        },
    }
    env = celery_env(
        home,
        base_url,
        meta_db,
        f"redis://127.0.0.1:6379/{REDIS_DB}",
        key_prefix,
        **{f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in connections.items()},
        SMSPARTNER_EXAMPLE_POLL_INTERVAL=str(POLL_INTERVAL),
        SMSPARTNER_EXAMPLE_SQL_CONN_ID="warehouse",
        AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD=str(HEARTBEAT_THRESHOLD),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10",
    )
    airflow = AirflowDeployment(home=home, env=env, base_url=base_url)
    deployment = Events(airflow, sandbox, meta_db, warehouse_db)
    created: list[str] = []
    try:
        for name in (meta_db, warehouse_db):
            psql(f'CREATE DATABASE "{name}"')
            created.append(name)
        deployment.warehouse("CREATE TABLE marketing_contacts (contact_id INTEGER, phone TEXT)")
        for contact in CONTACTS:
            deployment.warehouse("INSERT INTO marketing_contacts VALUES (%s, %s)", *contact)
        _start(airflow, port, key_prefix)
        airflow.api("POST", "/pools", {"name": POOL, "slots": 4, "description": "SMS Partner API"})
        print(
            f"\ndeployment ready in {time.monotonic() - started:.0f} s: {base_url}, home {home}", flush=True
        )
        unpaused = time.monotonic()
        _unpause(airflow)
        deployment.figures["first_run"] = {
            "runs": len(deployment.settled()),
            "seconds_from_unpause": round(time.monotonic() - unpaused, 1),
        }
        yield deployment
    finally:
        killed = airflow.stop()
        sandbox.stop()
        for name in created:
            psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        delete_redis_keys(REDIS_DB, key_prefix)
        (home / "latencies.json").write_text(json.dumps(deployment.figures, indent=2))
        print(f"\nfigures: {json.dumps(deployment.figures)}", flush=True)
        print(f"deployment stopped after {time.monotonic() - started:.0f} s; killed: {killed or 'nothing'}")


def test_first_poll_fills_the_stale_copy(events: Events):
    """Unpaused with no extract ever run, the first poll fires; one run fills the table."""
    runs = events.settled()
    assert len(runs) == 1, runs
    assert len(events.events()) == 1
    listed = events.warehouse(f"SELECT COUNT(*) FROM {TABLE} WHERE removed_at IS NULL")[0][0]
    assert listed == len(events.sandbox.state) == SEEDED_STOPS + len(STOPPED)
    print(f"\nfirst run: {events.figures['first_run']}", flush=True)


def test_unchanged_list_starts_nothing(events: Events):
    """6 poll intervals of an unchanged list (7 polls seen): no event, no run."""
    runs_before, events_before = len(events.settled()), len(events.events())
    since = time.monotonic()

    def watched_enough() -> list[float] | None:
        polls = events.list_polls(since)
        return polls if len(polls) > QUIET_POLLS else None

    timeout = (QUIET_POLLS + 1) * POLL_INTERVAL + 30
    polls = events.airflow.wait_for(f"{QUIET_POLLS + 1} polls", watched_enough, timeout, every=0.5)
    watched = time.monotonic() - since
    assert len(events.events()) == events_before
    assert len(events.settled()) == runs_before
    events.figures["quiet"] = {
        "seconds": round(watched, 1),
        "polls": len(polls),
        "first_to_last_poll_seconds": round(polls[-1] - polls[0], 1),
    }
    print(f"\nquiet list: {events.figures['quiet']}", flush=True)
    assert watched >= QUIET_POLLS * POLL_INTERVAL, events.figures["quiet"]


def test_each_stop_reaches_the_warehouse_within_60_s(events: Events):
    """5 STOPs, one at a time: each row lands within 60 s; one event and one run per change."""
    latencies = []
    for _ in range(CHANGES):
        runs_before, events_before = len(events.settled()), len(events.events())
        phone, stop_id = events.add_stop()
        added = time.monotonic()
        latencies.append(events.wait_for_row(stop_id, added, timeout=MAX_LATENCY + 30))
        assert events.warehouse(f"SELECT phone_e164 FROM {TABLE} WHERE stop_id = %s", stop_id) == [(phone,)]
        assert len(events.settled()) == runs_before + 1
        assert len(events.events()) == events_before + 1
    summary = {
        "latencies": [round(s, 1) for s in latencies],
        "median": round(statistics.median(latencies), 1),
        "max": round(max(latencies), 1),
    }
    events.figures["changes"] = summary
    print(f"\nSTOP added -> row in {TABLE}, {CHANGES} changes (s): {summary}", flush=True)
    assert max(latencies) <= MAX_LATENCY, summary


def test_change_survives_a_triggerer_crash(events: Events):
    """A STOP added, then the triggerer killed before its next poll and started again: the new
    triggerer takes the trigger over once the dead one's heartbeat is 30 s old, finds the copy
    stale at its first poll, and the row lands within 60 s + 30 s + the restart."""
    airflow = events.airflow
    events.settled()
    events_before = len(events.events())
    old_jobs = {job["id"] for job in _triggerer_jobs(airflow)}
    # Right after a poll (the sandbox saw it 1 s ago, so its answer is out): the next is 4 s away.
    since = time.monotonic()
    airflow.wait_for("a poll", lambda: events.list_polls(since), 2 * POLL_INTERVAL, every=0.05)
    time.sleep(1)
    phone, stop_id = events.add_stop()
    added = time.monotonic()
    triggerer = airflow.service("triggerer")
    pids = airflow.kill("triggerer")
    killed = time.monotonic()
    assert len(events.events()) == events_before, "the event came before the kill: nothing tested"
    airflow.restart(triggerer)
    new_job = airflow.wait_for(
        "the new triggerer to heartbeat",
        lambda: next((j["id"] for j in _triggerer_jobs(airflow) if j["id"] not in old_jobs), None),
        STARTUP_TIMEOUT,
    )
    restart = time.monotonic() - killed
    allowance = MAX_LATENCY + HEARTBEAT_THRESHOLD + restart
    latency = events.wait_for_row(stop_id, added, timeout=allowance + 30)
    taken_over = {row[0] for row in events.metadata("SELECT triggerer_id FROM trigger")}
    polls_after_kill = events.list_polls(killed)
    runs = events.settled()
    summary = {
        "latency": round(latency, 1),
        "allowance": round(allowance, 1),
        "restart_seconds": round(restart, 1),
        "first_poll_after_kill_seconds": round(polls_after_kill[0] - killed, 1) if polls_after_kill else None,
        "events": len(events.events()) - events_before,
        "pids_killed": pids,
    }
    events.figures["triggerer_restart"] = summary
    print(f"\ntriggerer killed and restarted: {summary}", flush=True)
    assert events.warehouse(f"SELECT phone_e164 FROM {TABLE} WHERE stop_id = %s", stop_id) == [(phone,)]
    assert taken_over == {new_job}
    assert len(pids) >= 2, "the triggerer's trigger runner process was not found"
    assert latency <= allowance, summary
    assert runs[-1]["state"] == "success"


def _triggerer_jobs(airflow: AirflowDeployment) -> list[dict[str, Any]]:
    """The triggerer jobs that heartbeat now."""
    jobs = airflow.api("GET", "/jobs", job_type="TriggererJob", is_alive="true", limit=100)["jobs"]
    return [job for job in jobs if job["state"] == "running"]
