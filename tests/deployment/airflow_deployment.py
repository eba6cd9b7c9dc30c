"""A real Airflow deployment on loopback, for tests: processes, REST calls, clean-up.

Every process is started from this project's virtualenv (where ``make`` installed the provider),
in its own session, with its output in ``<home>/logs/<name>.log``. :meth:`AirflowDeployment.stop`
ends each process and its descendants by pid (SIGTERM, then SIGKILL after a grace period), so a
failed test leaves nothing running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil

AIRFLOW = [sys.executable, "-m", "airflow"]
#: The PostgreSQL server of the build machines (trust auth), as ``user@host:port``.
POSTGRES = "postgres@127.0.0.1:5432"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
T = TypeVar("T")


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or why it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


class DeploymentError(AssertionError):
    """The deployment did not reach the state a test waited for (with the logs that explain why)."""


@dataclass
class Service:
    """One long-running Airflow process of the deployment."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    #: What :meth:`AirflowDeployment.restart` starts again: ``airflow <args>`` with ``env`` added.
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None


@dataclass
class AirflowDeployment:
    """Airflow processes sharing one environment (home, metadata DB, executor, connections)."""

    home: Path
    env: dict[str, str]
    base_url: str
    services: list[Service] = field(default_factory=list)

    # -- processes ------------------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 300) -> str:
        """Run ``airflow <args>`` to completion; return its output, raise with it on failure."""
        log_path = self.home / "logs" / f"{'-'.join(args[:2])}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            done = subprocess.run(
                [*AIRFLOW, *args],
                env=self.env,
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            raise DeploymentError(f"airflow {' '.join(args)} failed ({done.returncode}):\n{tail(log_path)}")
        return log_path.read_text(errors="replace")

    def start(
        self, name: str, *args: str, env: Mapping[str, str] | None = None, log_name: str | None = None
    ) -> Service:
        """Start ``airflow <args>`` in the background, in a session of its own; its output goes to
        ``<home>/logs/<log_name or name>.log``."""
        log_path = self.home / "logs" / f"{log_name or name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            [*AIRFLOW, *args],
            env={**self.env, **(env or {})},
            cwd=self.home,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        service = Service(name=name, proc=proc, log_path=log_path, log_file=log_file, args=args, env=env)
        self.services.append(service)
        return service

    def service(self, name: str) -> Service:
        """The running service called ``name``."""
        found = [service for service in self.services if service.name == name]
        if not found:
            raise DeploymentError(f"no service {name!r}; running: {[s.name for s in self.services]}")
        return found[-1]

    def kill(self, name: str) -> list[int]:
        """Crash a service: SIGKILL to it and every descendant, by pid (no clean-up runs, as when a
        machine dies); return the pids killed. The service leaves :attr:`services` (so
        :meth:`check_alive` does not report it); its log stays."""
        service = self.service(name)
        processes = [psutil.Process(service.proc.pid)]
        with contextlib.suppress(psutil.NoSuchProcess):
            processes += processes[0].children(recursive=True)
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        service.proc.wait(timeout=10)
        service.log_file.close()
        self.services.remove(service)
        # The descendants are orphans now: gone once init reaps them (a zombie has stopped anyway).
        self.wait_for(f"the processes of {name} to end", lambda: not _running(processes[1:]), 10, 0.1)
        return [process.pid for process in processes]

    def restart(self, service: Service) -> Service:
        """Start what ``service`` ran again (after :meth:`kill`), under the same name, with the same
        arguments and environment; the new log is ``<name>-<n>.log`` (n = 2, 3, ...)."""
        logs = self.home / "logs"
        n = 1 + len([*logs.glob(f"{service.name}.log"), *logs.glob(f"{service.name}-*.log")])
        return self.start(service.name, *service.args, env=service.env, log_name=f"{service.name}-{n}")

    def check_alive(self) -> None:
        """Raise, with its log, if a service has exited."""
        for service in self.services:
            if service.proc.poll() is not None:
                raise DeploymentError(
                    f"{service.name} exited with {service.proc.returncode}; log {service.log_path}:\n"
                    f"{tail(service.log_path)}"
                )

    def stop(self, grace: float = 30) -> list[str]:
        """End every service and its descendants, by pid; return what had to be killed."""
        pids: list[int] = []
        for service in self.services:
            with contextlib.suppress(psutil.NoSuchProcess):
                pids += [c.pid for c in psutil.Process(service.proc.pid).children(recursive=True)]
            pids.append(service.proc.pid)
        for service in self.services:
            if service.proc.poll() is None:
                _signal(service.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in self.services:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        # Anything left (a service deaf to SIGTERM, a task process outside the group) is killed.
        killed = []
        for pid in pids:
            try:
                process = psutil.Process(pid)
                if process.status() != psutil.STATUS_ZOMBIE:
                    killed.append(f"{pid} {' '.join(process.cmdline()[:4])}")
                    process.kill()
            except psutil.NoSuchProcess:
                continue
        for service in self.services:
            try:
                service.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                killed.append(f"{service.proc.pid} ({service.name}) did not die")
            service.log_file.close()
        return killed

    def diagnostics(self, lines: int = 25) -> str:
        """The tail of every service log, for failure messages."""
        return "\n".join(
            f"--- {service.name} (pid {service.proc.pid}, {service.log_path}):\n{tail(service.log_path, lines)}"
            for service in self.services
        )

    # -- REST API -------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """Call the REST API (``/api/v2`` + ``path``); return the decoded JSON answer."""
        url = f"{self.base_url}/api/v2{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise DeploymentError(
                f"{method} {url}: HTTP {exc.code} {exc.read().decode(errors='replace')[:2000]}"
            ) from None
        return json.loads(raw) if raw else None

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
        """Poll ``check`` until it returns something other than None/False; fail with the logs."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            self.check_alive()
            try:
                result = check()
                if result is not None and result is not False:
                    return result
            except (DeploymentError, OSError, ValueError) as exc:
                last_error = f" (last error: {exc})"
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"timed out after {timeout:.0f} s waiting for {what}{last_error}\n{self.diagnostics()}"
                )
            time.sleep(every)

    def health(self) -> dict[str, Any]:
        return self.api("GET", "/monitor/health")

    def wait_healthy(
        self,
        timeout: float,
        parts: tuple[str, ...] = ("metadatabase", "scheduler", "triggerer", "dag_processor"),
    ) -> None:
        """Wait until every one of ``parts`` reports healthy at ``/monitor/health``."""

        def healthy() -> bool:
            health = self.health()
            return all(health.get(part, {}).get("status") == "healthy" for part in parts)

        self.wait_for(f"{', '.join(parts)} to report healthy", healthy, timeout)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Trigger a run now through the REST API; return its run id."""
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf or {})})
        return run["dag_run_id"]

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns", limit=100, order_by="run_after")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        return self.api("GET", path, limit=100)["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        path = (
            f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/"
            f"{task_id}/xcomEntries/return_value"
        )
        return self.api("GET", path, map_index=map_index, deserialize=True)["value"]

    def wait_for_runs(self, dag_id: str, timeout: float) -> list[dict[str, Any]]:
        """Wait until the DAG has runs and none is queued or running; return them, oldest first."""

        def finished() -> list[dict[str, Any]] | None:
            runs = self.dag_runs(dag_id)
            return runs if runs and all(r["state"] in TERMINAL_RUN_STATES for r in runs) else None

        return self.wait_for(f"every run of {dag_id} to finish", finished, timeout, every=2)

    def failure_report(self, dag_id: str, runs: list[dict[str, Any]]) -> str:
        """Task states and the end of each failed task's log, for an assertion message."""
        report = []
        for run in runs:
            for ti in self.task_instances(dag_id, run["dag_run_id"]):
                report.append(f"{run['dag_run_id']} {ti['task_id']}[{ti['map_index']}] {ti['state']}")
                if ti["state"] not in ("success", "skipped"):
                    pattern = f"dag_id={dag_id}/run_id={run['dag_run_id']}/task_id={ti['task_id']}/**/*.log"
                    for log in sorted((self.home / "logs").glob(pattern)):
                        report.append(f"--- {log}:\n{tail(log, 30)}")
        return "\n".join(report)


def celery_env(
    home: Path, base_url: str, metadata_db: str, broker_url: str, key_prefix: str, **settings: str
) -> dict[str, str]:
    """The environment of every process of a CeleryExecutor deployment on loopback.

    Nothing comes from the test process's own Airflow settings (``AIRFLOW__*``, ``AIRFLOW_CONN_*``,
    ``AIRFLOW_VAR_*``): DAGs in ``<home>/dags``, no examples, metadata database ``metadata_db`` on
    :data:`POSTGRES` (also the Celery result backend), broker ``broker_url`` with every key under
    ``key_prefix``, every admin logged in (simple auth manager), fresh Fernet, API and JWT secrets.
    ``settings`` (variable names in full, e.g. ``AIRFLOW_CONN_WAREHOUSE``) are added last.
    """
    import secrets

    from cryptography.fernet import Fernet

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{POSTGRES}/{metadata_db}",
            "AIRFLOW__API__BASE_URL": base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__CELERY__BROKER_URL": broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{POSTGRES}/{metadata_db}",
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"{key_prefix}:",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    env.update(settings)
    return env


def delete_redis_keys(db: int, prefix: str) -> None:
    """Delete every key containing ``prefix`` from database ``db`` of the Redis on 127.0.0.1:6379."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    try:
        for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def psql(sql: str, dbname: str = "postgres", params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Run ``sql`` (autocommit) on database ``dbname`` of :data:`POSTGRES`; return its rows."""
    import psycopg

    with psycopg.connect(f"postgresql://{POSTGRES}/{dbname}", autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def _running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running (neither gone nor a zombie)."""
    running = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
    return running


def _signal(pid: int, sig: signal.Signals) -> None:
    """Signal the process group the service leads (it was started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
