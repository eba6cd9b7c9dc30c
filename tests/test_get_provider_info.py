"""Provider registration: the metadata validates and Airflow's CLI sees the provider and its connection type."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import airflow
import jsonschema
import pytest

from airflow_provider_smspartner import __version__
from airflow_provider_smspartner.get_provider_info import get_provider_info
from airflow_provider_smspartner.utils.connection import EXTRA_FIELDS

AIRFLOW_CLI = [sys.executable, "-m", "airflow"]


def _cli_json(*args: str) -> list[dict]:
    result = subprocess.run(
        [*AIRFLOW_CLI, *args, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=180,
        env=os.environ.copy(),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # The CLI may log before the JSON document; the document is the last line that parses.
    for line in reversed(result.stdout.strip().splitlines()):
        if line.startswith("["):
            return json.loads(line)
    raise AssertionError(f"no JSON in output: {result.stdout[-2000:]}")


class TestProviderInfo:
    def test_validates_against_airflow_schema(self):
        schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
        jsonschema.validate(get_provider_info(), schema)

    def test_connection_form(self):
        (conn_type,) = get_provider_info()["connection-types"]
        assert conn_type["connection-type"] == "smspartner"
        assert conn_type["hook-class-name"] == "airflow_provider_smspartner.hooks.smspartner.SmsPartnerHook"
        assert conn_type["hook-name"] == "SMS Partner"
        behaviour = conn_type["ui-field-behaviour"]
        assert set(behaviour["hidden-fields"]) == {"login", "schema", "port"}
        assert behaviour["relabeling"] == {"password": "API Key", "host": "API base URL"}
        assert behaviour["placeholders"]["host"] == "https://api.smspartner.fr/v1"
        assert list(conn_type["conn-fields"]) == [extra.name for extra in EXTRA_FIELDS]

    def test_version(self):
        assert get_provider_info()["versions"] == [__version__]

    @pytest.mark.parametrize("module", ["hooks", "operators", "triggers"])
    def test_listed_modules_import(self, module):
        import importlib

        for entry in get_provider_info()[module]:
            for name in entry["python-modules"]:
                importlib.import_module(name)


@pytest.mark.slow  # a child interpreter
class TestAirflowCli:
    def test_providers_list_shows_package(self):
        packages = {row["package_name"]: row for row in _cli_json("providers", "list")}
        assert packages["airflow-provider-smspartner"]["version"] == __version__

    def test_providers_hooks_shows_connection_type(self):
        hooks = {row["connection_type"]: row for row in _cli_json("providers", "hooks")}
        assert hooks["smspartner"]["class"] == "airflow_provider_smspartner.hooks.smspartner.SmsPartnerHook"

    def test_plugins_shows_connection_test_plugin(self):
        plugins = {row["name"]: row for row in _cli_json("plugins")}
        assert "smspartner_connection_test" in plugins
