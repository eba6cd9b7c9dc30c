"""Shared fixtures: an isolated Airflow home, the sandbox API, and warehouse connections; the tiers.

Airflow reads its configuration when first imported, so the environment is set here, at the top of
the first module pytest loads, before any test module imports airflow. Every process that loads
this module (the pytest process, each pytest-xdist worker) gets an Airflow home and a SQLite
metadata database of its own, removed when it exits; the child interpreters a test starts inherit
them, and the Fernet key, so they can read what the test process encrypted (a trigger's kwargs).

The tiers are pytest markers (pyproject.toml), applied here from the fixtures a test uses
(:data:`TIER_FIXTURES`, :func:`pytest_collection_modifyitems`) and from where it lives
(:data:`TIER_FOLDERS`: ``tests/system``, the whole DAG runs, is slow; ``tests/deployment`` and
``tests/ui`` are deployment): ``make test`` runs every tier but ``slow`` and ``deployment``.
A test that starts a child interpreter is marked ``slow`` by hand, and fails if it is not.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import importlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="smspartner-tests-airflow-"))
# Removed when this process exits: its child interpreters have ended by then.
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
# Without a configured key each process draws its own, and a child interpreter (a DAG run of its
# own) could not decrypt what this process stored in the metadata database.
os.environ.setdefault("AIRFLOW__CORE__FERNET_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "example_dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")

TEST_API_KEY = "sk-test-0123456789abcdef-SECRET"
#: The numbers the ``warehouse`` fixture seeds into the sandbox's stop list.
STOPPED = ["+33612345678", "+33698765432"]
#: The example warehouse's marketing contacts (1 and 2 are STOPPED) and CRM unsubscribes, typed as
#: people type them: the ``warehouse`` fixture's and the Celery deployment's.
CONTACTS = [(1, "06 12 34 56 78"), (2, "0033 6 98 76 54 32"), (3, "+33 6 11 11 11 11"), (4, "junk")]
UNSUBSCRIBES = ["06 55 44 33 22", "+33655443322", "0612345678", "+41 79 123 45 67", "nope"]
IN_CI = bool(os.environ.get("CI"))

#: The fixtures that put a test in a tier (a test using any of them, directly or through another
#: fixture, gets the marker).
TIER_FIXTURES = {
    "db": {"postgres_conn", "mysql_conn"},
    "redis": {"redis_server"},
    "slow": {"airflow_db", "example_dagbag", "smspartner_pool"},
}
#: Parameter values by which a test picks a server at run time, e.g. ``warehouse_conn``'s
#: ``postgres`` or ``request.getfixturevalue(f"{server}_conn")``: such a test is in the db tier.
DB_PARAMETERS = {"postgres", "postgresql", "mysql", "mariadb", "postgres_conn", "mysql_conn"}
#: Folders whose tests are in a tier: whole DAG runs; deployments and the browser.
TIER_FOLDERS = {
    "slow": (PROJECT_ROOT / "tests" / "system",),
    "deployment": (PROJECT_ROOT / "tests" / "deployment", PROJECT_ROOT / "tests" / "ui"),
}
#: What the deployment tier needs beyond the dev extra: the deployment extra (``make test-all``).
DEPLOYMENT_MODULES = ("celery", "airflow.providers.celery", "playwright", "uv")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with the tiers its fixtures, parameters and folder put it in."""
    for item in items:
        for tier in tiers_of(item):
            item.add_marker(tier)


def tiers_of(item: pytest.Item) -> set[str]:
    """The tiers ``item`` belongs to by its fixtures, parameters and folder (its own markers aside)."""
    fixtures = set(getattr(item, "fixturenames", ()))
    tiers = {tier for tier, names in TIER_FIXTURES.items() if fixtures & names}
    callspec = getattr(item, "callspec", None)
    values = {v for v in (callspec.params.values() if callspec else ()) if isinstance(v, str)}
    if "request" in fixtures and values & DB_PARAMETERS:
        tiers.add("db")
    parents = Path(item.path).parents
    tiers.update(tier for tier, folders in TIER_FOLDERS.items() if any(f in parents for f in folders))
    return tiers


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failure report a pytest-xdist worker can send: its text with any lone surrogate (the
    unencodable-text tests' inputs) escaped, where execnet would otherwise crash the worker."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and hasattr(item.config, "workerinput"):
        text = str(report.longrepr)
        safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
        if safe != text:
            report.longrepr = safe
        report.sections = [
            (title, body.encode("utf-8", "backslashreplace").decode("utf-8"))
            for title, body in report.sections
        ]


#: Child processes a test's body started, by pid (:func:`pytest_runtest_call` records them).
_CHILDREN_BEFORE_CALL: dict[str, set[int]] = {}


def _children() -> set[int]:
    """The pids of this process's live descendants (a killed child not yet waited for is left out).

    Called twice per test: on Linux it follows ``/proc/<pid>/task/<tid>/children`` from this
    process down, 0.04 ms a call without children, where psutil's ``children`` reads every
    process's ``stat`` to find parents, 1.3 ms a call (one-off ``timeit`` on the build machine).
    """
    import psutil

    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        found = {child.pid for child in psutil.Process().children(recursive=True)}
    else:
        found = set()
        pending = [os.getpid()]
        while pending:
            pid = pending.pop()
            with contextlib.suppress(OSError):  # a process that exited meanwhile
                for task in os.scandir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError):
                        children = set(map(int, Path(task.path, "children").read_text().split()))
                        pending += children - found
                        found |= children
    live = set()
    for pid in found:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                live.add(pid)
    return live


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Note the children alive before the test's body: those its fixtures started are theirs."""
    _CHILDREN_BEFORE_CALL[item.nodeid] = _children()
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Kill, by pid, every process the test's body started and left running, before its fixtures
    are torn down; then fail the test for it.

    A test that failed between starting a child and stopping it (an assertion while it waited for
    the child) left it running: the child kept its database connections, and the results table
    fixture's ``DROP TABLE`` then waited for it. On MariaDB that wait is ``lock_wait_timeout`` (a
    year), in C code that a signal cannot interrupt: the CI run hung until its budget ran out.
    """
    import psutil

    before = _CHILDREN_BEFORE_CALL.pop(item.nodeid, None)
    if item.get_closest_marker("deployment"):
        # A deployment test hands what its body starts (a restarted triggerer, the renderers of
        # the session's browser) to its deployment or browser fixture, which stops them by pid.
        before = None
    leftover = []
    for pid in set() if before is None else _children() - before:
        with contextlib.suppress(psutil.Error):
            leftover.append(psutil.Process(pid))
    described = []
    for child in leftover:
        with contextlib.suppress(psutil.Error):
            described.append(f"{child.pid} ({' '.join(child.cmdline())[:160]})")
            child.kill()
    psutil.wait_procs(leftover, timeout=30)
    yield  # the fixtures' teardown
    if described:
        pytest.fail(
            f"{item.nodeid} left {len(described)} process(es) running, killed now: {'; '.join(described)}",
            pytrace=False,
        )


def _in_tier(request: pytest.FixtureRequest, tier: str) -> None:
    """Fail a test that reached a tier's fixture without its marker (asked for it at run time
    under a parameter :data:`DB_PARAMETERS` does not know): ``-m`` would select it wrongly."""
    if request.node.get_closest_marker(tier) is None:
        pytest.fail(
            f"{request.node.nodeid} uses {request.fixturename} but is not marked {tier}: "
            f"take the fixture as an argument or mark the test @pytest.mark.{tier}"
        )


def _is_python(program: object) -> bool:
    """Whether ``program`` (a command's first word) starts a Python interpreter of this environment."""
    path = os.fspath(program) if isinstance(program, (str, os.PathLike)) else ""
    if not path:
        return False
    name = os.path.basename(path)
    return name.startswith("python") or os.path.dirname(os.path.abspath(path)) == os.path.dirname(
        sys.executable
    )


@pytest.fixture(autouse=True)
def _tier_rules(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment test needs the deployment extra (skipped on a laptop without it, failed in CI);
    a test outside the slow and deployment tiers must not start a child interpreter."""
    node = request.node
    if node.get_closest_marker("deployment"):
        for module in DEPLOYMENT_MODULES:
            require_module(module, "the deployment tests need the deployment extra: make test-all")
        return
    if node.get_closest_marker("slow"):
        return
    real_init = subprocess.Popen.__init__

    def init(self: subprocess.Popen, args: Any, *more: Any, **kwargs: Any) -> None:
        command = args if isinstance(args, (str, bytes, os.PathLike)) else next(iter(args), "")
        program = command.split()[0] if isinstance(command, str) and kwargs.get("shell") else command
        if _is_python(program):
            pytest.fail(
                f"{node.nodeid} starts a child interpreter ({program}): mark it @pytest.mark.slow",
                pytrace=False,
            )
        real_init(self, args, *more, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", init)


def _server_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    """Skip on a laptop without the server; fail in CI, where the server must be there."""
    if _server_reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI is set: this test must run)")
    pytest.skip(f"{message}; start it to run this test")


def require_module(name: str, why: str) -> None:
    """Skip on a laptop without module ``name``; fail in CI, where the dev extra installs it."""
    try:
        importlib.import_module(name)
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"{name} cannot be imported ({exc}); {why} (CI is set: this test must run)")
        pytest.skip(f"{name} is not installed; {why}", allow_module_level=True)


def smspartner_connection_json(base_url: str, api_key: str = TEST_API_KEY, **extras: object) -> str:
    """The JSON form of an ``smspartner`` connection, with fast test defaults for retries/throttle."""
    extra: dict[str, object] = {
        "max_retries": 3,
        "retry_backoff": 0,
        "requests_per_second": 2000,
        "timeout": 5,
    }
    extra.update(extras)
    return json.dumps({"conn_type": "smspartner", "host": base_url, "password": api_key, "extra": extra})


@pytest.fixture
def sandbox() -> Iterator:
    """A fresh sandbox API on a free loopback port, accepting ``TEST_API_KEY``, with 5 seeded stops."""
    from airflow_provider_smspartner.sandbox import SandboxServer

    with SandboxServer(api_key=TEST_API_KEY, seed_stops=5, seed=7) as server:
        yield server


@pytest.fixture
def smspartner_conn(monkeypatch: pytest.MonkeyPatch, sandbox) -> str:
    """Point ``smspartner_default`` at the sandbox; return the connection id."""
    monkeypatch.setenv("AIRFLOW_CONN_SMSPARTNER_DEFAULT", smspartner_connection_json(sandbox.base_url))
    return "smspartner_default"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, sandbox: Any) -> Any:
    """The sandbox, with ``smspartner_default`` pointing at it and retries enough to outlast its
    random faults."""
    from tests.helpers import use_sandbox  # tests.helpers imports this module

    use_sandbox(monkeypatch, sandbox)
    return sandbox


@pytest.fixture
def sqlite_conn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A SQLite warehouse in a file; return its connection id."""
    path = tmp_path / "warehouse.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE_SQLITE", json.dumps({"conn_type": "sqlite", "host": str(path)})
    )
    return "warehouse_sqlite"


@pytest.fixture
def postgres_conn(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """The PostgreSQL of the build machines (database ``test``); return its connection id."""
    _in_tier(request, "db")
    require_server("PostgreSQL", "127.0.0.1", 5432)
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE_POSTGRES",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "login": "postgres",
                "schema": "test",
            }
        ),
    )
    return "warehouse_postgres"


@pytest.fixture
def mysql_conn(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """The MariaDB of the build machines (database ``test``, root without password); return its id."""
    _in_tier(request, "db")
    require_server("MariaDB", "127.0.0.1", 3306)
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE_MYSQL",
        json.dumps(
            {"conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "login": "root", "schema": "test"}
        ),
    )
    return "warehouse_mysql"


@pytest.fixture
def redis_server(request: pytest.FixtureRequest) -> tuple[str, int]:
    """The Redis of the build machines: ``(host, port)``. Each test keeps to keys of its own."""
    _in_tier(request, "redis")
    require_server("Redis", "127.0.0.1", 6379)
    return "127.0.0.1", 6379


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def warehouse_conn(request: pytest.FixtureRequest) -> str:
    """Each warehouse in turn (SQLite file, PostgreSQL, MariaDB); return its connection id."""
    return request.getfixturevalue(f"{request.param}_conn")


@pytest.fixture
def unique_table() -> str:
    """A table name no other test (or concurrent run) uses."""
    return f"stops_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A fresh Airflow metadata DB (SQLite, in the session's AIRFLOW_HOME) for ``dag.test()`` runs."""
    from airflow.utils import db

    db.resetdb()


@pytest.fixture(scope="session")
def example_dagbag(airflow_db):
    """The example DAGs, parsed once, as Airflow's DagBag sees them."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(PROJECT_ROOT / "example_dags"))


@pytest.fixture
def warehouse(monkeypatch, tmp_path, sandbox) -> Path:
    """A SQLite warehouse with messy contacts and CRM unsubscribes; the sandbox holds STOPPED."""
    sandbox.state.seed_numbers(STOPPED)
    monkeypatch.setenv("AIRFLOW_CONN_SMSPARTNER_DEFAULT", smspartner_connection_json(sandbox.base_url))
    path = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE marketing_contacts (contact_id INTEGER, phone TEXT, sms_opt_out INTEGER DEFAULT 0)"
        )
        db.executemany("INSERT INTO marketing_contacts (contact_id, phone) VALUES (?, ?)", CONTACTS)
        db.execute("CREATE TABLE crm_unsubscribes (phone TEXT)")
        db.executemany("INSERT INTO crm_unsubscribes VALUES (?)", [(phone,) for phone in UNSUBSCRIBES])
    return path


@pytest.fixture(scope="session")
def smspartner_pool(airflow_db) -> str:
    """The ``smspartner_api`` Pool every SMS Partner task of the examples runs in.

    ``dag.test()`` runs tasks in-process and does not enforce pools, but a deployment needs the
    pool, so the tests create it as the README tells users to.
    """
    from airflow.models.pool import Pool

    Pool.create_or_update_pool("smspartner_api", slots=1, description="test", include_deferred=False)
    return "smspartner_api"
