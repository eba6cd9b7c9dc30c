"""End-to-end check of the ``smspartner`` connection form in the Airflow 3 React UI.

A real ``airflow api-server`` is started on loopback with its own AIRFLOW_HOME, then:

1. ``GET /ui/connections/hook_meta`` (what the React form renders) is checked directly;
2. headless Chromium (Playwright, Debian's ``/usr/bin/chromium``) opens Admin > Connections >
   Add Connection, picks "SMS Partner" and checks the relabelled / hidden fields, then saves a
   screenshot. With ``SMSPARTNER_UPDATE_SCREENSHOT=1`` the screenshot also replaces
   ``docs/images/connection-form.png``.

3. a connection is saved through that form (pointing at the sandbox API), and its **Test**
   button in the connections list reports success. Airflow 3.3.2's UI posts ``port: 0`` for a
   connection without a port and its API server then refuses the test with HTTP 400 ("The host or
   port to test differs from the stored connection"); the provider's API-server plugin
   (``plugins.connection_check.ConnectionTestPortFix``) drops that ``0`` for ``smspartner`` connections,
   so the port field can stay hidden.

Login: ``[core] simple_auth_manager_all_admins = True`` makes the SimpleAuthManager add an admin
token to every request, so neither the API calls nor the UI need credentials.

Without Chromium or the playwright package the browser test is skipped on a laptop and fails when
``CI`` is set.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smspartner.utils.connection import EXTRA_FIELDS
from tests.helpers import free_port

pytestmark = [pytest.mark.timeout(600), pytest.mark.deployment]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOT = PROJECT_ROOT / "docs" / "images" / "connection-form.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = bool(os.environ.get("CI"))
READY_TIMEOUT_S = 120
WAIT_MS = 30_000  # bound on every single UI wait

HOST_PLACEHOLDER = "https://api.smspartner.fr/v1"
# The form's extra fields are built from the one spec of the extras.
EXTRA_FIELD_LABELS = {extra.name: extra.label for extra in EXTRA_FIELDS}
UI_CONN_ID = "smspartner_ui_test"
UI_API_KEY = "sk-ui-test-0123456789abcdef"


def _skip_or_fail(reason: str) -> None:
    """Skip on a laptop; fail in CI, where the browser test must run."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set: this test must run)")
    pytest.skip(reason)


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


@dataclass
class ApiServer:
    base_url: str
    log_path: Path

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.base_url + path, timeout=30) as response:
            return json.load(response)


def _server_env(home: Path) -> dict[str, str]:
    """The parent's environment without any Airflow setting, plus an isolated Airflow home.

    tests/conftest.py points AIRFLOW_HOME etc. of the test process elsewhere (and sets unit-test
    mode); none of that must leak into the server.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))
    }
    dags = home / "dags"
    dags.mkdir(exist_ok=True)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # The Test button of Admin > Connections is off by default.
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    return env


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's whole process group (uvicorn workers included)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """``airflow api-server`` on a free loopback port with its own home; killed afterwards."""
    home = tmp_path_factory.mktemp("airflow-ui-home")
    env = _server_env(home)
    airflow_cmd = [sys.executable, "-m", "airflow"]

    migrate_log = home / "db-migrate.log"
    with migrate_log.open("wb") as out:
        migrate = subprocess.run(
            [*airflow_cmd, "db", "migrate"],
            env=env,
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=180,
            check=False,
        )
    if migrate.returncode != 0:
        pytest.fail(f"airflow db migrate failed ({migrate.returncode}):\n{_log_tail(migrate_log)}")

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = home / "api-server.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        [*airflow_cmd, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        cwd=home,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own process group: the finalizer kills it with its children
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"airflow api-server exited with {proc.returncode} before becoming ready; "
                    f"log {log_path}:\n{_log_tail(log_path)}"
                )
            try:
                with urllib.request.urlopen(base_url + "/api/v2/monitor/health", timeout=2) as resp:
                    health = json.load(resp)
                if health.get("metadatabase", {}).get("status") == "healthy":
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"airflow api-server not healthy after {READY_TIMEOUT_S} s; "
                    f"log {log_path}:\n{_log_tail(log_path)}"
                )
            time.sleep(0.5)
        yield ApiServer(base_url=base_url, log_path=log_path)
    finally:
        _stop_group(proc)
        log_file.close()


def test_hook_meta_describes_smspartner_form(api_server: ApiServer) -> None:
    """The API the React form is built from hides login/schema/port and relabels the rest."""
    try:
        hook_meta = api_server.get_json("/ui/connections/hook_meta")
    except urllib.error.HTTPError as exc:
        pytest.fail(f"GET /ui/connections/hook_meta: HTTP {exc.code}; log {api_server.log_path}")
    by_type = {entry["connection_type"]: entry for entry in hook_meta}
    assert "smspartner" in by_type, f"smspartner missing from hook_meta: {sorted(by_type)}"
    meta = by_type["smspartner"]
    assert meta["hook_name"] == "SMS Partner"

    standard = meta["standard_fields"]
    # The API calls the connection's ``schema`` field ``url_schema``.
    for hidden in ("login", "port", "url_schema"):
        assert standard[hidden]["hidden"] is True, f"{hidden} should be hidden: {standard[hidden]}"
    assert standard["host"]["hidden"] is False
    assert standard["host"]["title"] == "API base URL"
    assert standard["host"]["placeholder"] == HOST_PLACEHOLDER
    assert standard["password"]["hidden"] is False
    assert standard["password"]["title"] == "API Key"

    extras = meta["extra_fields"]
    assert set(extras) == set(EXTRA_FIELD_LABELS)
    for name, label in EXTRA_FIELD_LABELS.items():
        assert extras[name]["schema"]["title"] == label


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (``playwright install`` is not needed)."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _skip_or_fail("the playwright package is not installed")
    if not os.path.exists(CHROMIUM):
        _skip_or_fail(f"{CHROMIUM} is not installed (apt-get install chromium)")

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_connection_form_in_browser(
    api_server: ApiServer, chromium: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Admin > Connections > Add Connection > "SMS Partner" shows the provider's form."""
    from playwright.sync_api import expect

    context = chromium.new_context(viewport={"width": 1400, "height": 900}, reduced_motion="reduce")
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    screenshot = tmp_path / "connection-form.png"
    try:
        page.goto(api_server.base_url + "/connections", wait_until="domcontentloaded")
        page.get_by_role("button", name="Add Connection", exact=True).click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        conn_type = dialog.get_by_role("combobox", name="Connection Type")

        def choose_type(name: str) -> None:
            conn_type.fill(name)  # react-select: type to filter, then pick the option
            page.get_by_role("option", name=name, exact=True).click()

        # Control: a generic connection shows Login/Port/Schema/Password under these labels, so
        # their absence below really comes from the provider's hidden-fields / relabeling.
        choose_type("Generic")
        for label in ("Host", "Login", "Password", "Port", "Schema"):
            expect(dialog.get_by_label(label, exact=True)).to_be_visible()

        choose_type("SMS Partner")
        host = dialog.get_by_label("API base URL", exact=True)
        expect(host).to_be_visible()
        expect(host).to_have_attribute("placeholder", HOST_PLACEHOLDER)
        expect(dialog.get_by_label("API Key", exact=True)).to_be_visible()
        for label in ("Host", "Login", "Password", "Port", "Schema"):
            expect(dialog.get_by_label(label, exact=True)).to_have_count(0)

        dialog.get_by_label("Connection ID").fill("smspartner_default")
        page.screenshot(path=str(screenshot), full_page=True, animations="disabled")
        if os.environ.get("SMSPARTNER_UPDATE_SCREENSHOT") == "1":
            DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(screenshot, DOCS_SCREENSHOT)

        # conn-fields extras live in the collapsed "Extra Fields" accordion item (opening it
        # collapses "Standard Fields": only one item is open at a time).
        dialog.get_by_role("button", name="Extra Fields", exact=True).click()
        for label in EXTRA_FIELD_LABELS.values():
            expect(dialog.locator("label", has_text=label)).to_be_visible()
        # Numeric extras are wired to their label; the string one (api_timezone) is not: its
        # <label for> does not match the textbox id in Airflow 3.3.2's UI, so only check the text.
        expect(dialog.get_by_label("Requests per second (client throttle)")).to_be_visible()
        page.screenshot(
            path=str(tmp_path / "connection-form-extra-fields.png"),
            full_page=True,
            animations="disabled",
        )
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        request.node.add_report_section(
            "call", "ui-debug", f"screenshots in {tmp_path}; server log {api_server.log_path}"
        )
        raise
    finally:
        context.close()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    """The SMS Partner sandbox the saved connection points at (the api-server calls it on Test)."""
    from airflow_provider_smspartner.sandbox import SandboxServer

    with SandboxServer(api_key=UI_API_KEY, seed_stops=3) as server:
        yield server


def test_test_button_succeeds_for_saved_connection(
    api_server: ApiServer, chromium: Any, sandbox: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Save an SMS Partner connection through the form, click its Test button: success."""
    from playwright.sync_api import expect

    context = chromium.new_context(viewport={"width": 1400, "height": 900}, reduced_motion="reduce")
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    tests: list[dict[str, Any]] = []

    def record(response: Any) -> None:
        if response.url.endswith("/api/v2/connections/test"):
            tests.append(
                {
                    "sent": json.loads(response.request.post_data or "{}"),
                    "status": response.status,
                    "body": response.json(),
                }
            )

    page.on("response", record)
    try:
        page.goto(api_server.base_url + "/connections", wait_until="domcontentloaded")
        page.get_by_role("button", name="Add Connection", exact=True).click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        dialog.get_by_label("Connection ID").fill(UI_CONN_ID)
        dialog.get_by_role("combobox", name="Connection Type").fill("SMS Partner")
        page.get_by_role("option", name="SMS Partner", exact=True).click()
        dialog.get_by_label("API base URL", exact=True).fill(sandbox.base_url)
        dialog.get_by_label("API Key", exact=True).fill(UI_API_KEY)
        dialog.get_by_role("button", name="Save", exact=True).click()
        expect(dialog).to_be_hidden()

        saved = api_server.get_json(f"/api/v2/connections/{UI_CONN_ID}")
        assert (saved["conn_type"], saved["host"], saved["port"]) == ("smspartner", sandbox.base_url, None)

        row = page.get_by_role("row").filter(has_text=UI_CONN_ID)
        with page.expect_response(lambda r: r.url.endswith("/api/v2/connections/test")):
            row.get_by_role("button", name="Test Connection").click()
        (test,) = tests
        # What Airflow 3.3.2's UI sends for a connection saved without a port: port 0.
        assert test["sent"]["port"] == 0
        assert test["status"] == 200, (
            f"{test} -- is the provider's airflow.plugins entry point installed? "
            "(`airflow plugins` should list smspartner_connection_test)"
        )
        assert test["body"]["status"] is True, test["body"]
        expect(page.get_by_text("Test Connection Successful")).to_be_visible()
        page.screenshot(path=str(tmp_path / "connection-test.png"), full_page=True, animations="disabled")
        assert sandbox.stats.by_endpoint["me"] == 1  # the hook really called GET /me
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        request.node.add_report_section(
            "call", "ui-debug", f"screenshots in {tmp_path}; server log {api_server.log_path}; tests {tests}"
        )
        raise
    finally:
        context.close()
