"""Shared fixtures: an isolated Airflow home, the sandbox API, and warehouse connections.

Airflow reads its configuration when first imported, so the environment is set here, at the top of
the first module pytest loads, before any test module imports airflow.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="smspartner-tests-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
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
def postgres_conn(monkeypatch: pytest.MonkeyPatch) -> str:
    """The PostgreSQL of the build machines (database ``test``); return its connection id."""
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
def mysql_conn(monkeypatch: pytest.MonkeyPatch) -> str:
    """The MariaDB of the build machines (database ``test``, root without password); return its id."""
    require_server("MariaDB", "127.0.0.1", 3306)
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE_MYSQL",
        json.dumps(
            {"conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "login": "root", "schema": "test"}
        ),
    )
    return "warehouse_mysql"


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
