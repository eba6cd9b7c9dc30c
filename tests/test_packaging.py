"""The distributions: built by ``python -m build`` without warnings, holding every module and
``py.typed``, declaring honest floors, and installable on the floor Airflow in a fresh virtualenv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGE = "airflow_provider_smspartner"
FLOOR_AIRFLOW = "apache-airflow==3.2.2"
FLOOR_CONSTRAINTS = PROJECT_ROOT / ".ci" / "floor-constraints.txt"

pytestmark = pytest.mark.slow  # every test reads the distributions `python -m build` makes


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Build the sdist and the wheel as a release would (``python -m build``); return their paths
    and the build's output."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(PROJECT_ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist, result.stdout + result.stderr


@pytest.fixture(scope="module")
def wheel(dists: tuple[Path, Path, str]) -> tuple[Path, str]:
    return dists[0], dists[2]


def _metadata(path: Path) -> tuple[list[str], object]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        return names, Parser().parsestr(archive.read(meta_name).decode())


def test_build_prints_no_warning(dists):
    output = dists[2].lower()
    assert "deprecat" not in output, output[-2000:]
    assert "warning" not in output, output[-2000:]


def test_sdist_holds_the_package_tests_and_readme(dists):
    _, sdist, _ = dists
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", f"{PACKAGE}/__init__.py", f"{PACKAGE}/py.typed"} <= names


def test_wheel_holds_every_module_and_py_typed(wheel):
    names, _ = _metadata(wheel[0])
    sources = {p.relative_to(PROJECT_ROOT).as_posix() for p in (PROJECT_ROOT / PACKAGE).rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))
    assert f"{PACKAGE}/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "example_dags/"))]


def test_metadata_declares_floors_classifiers_and_entry_point(wheel):
    names, meta = _metadata(wheel[0])
    requires = meta.get_all("Requires-Dist")
    assert "apache-airflow>=3.2" in requires
    assert "apache-airflow-providers-common-sql>=1.26" in requires
    # The SQLite provider is for the demo and the tests only.
    assert not [r for r in requires if r.startswith("apache-airflow-providers-sqlite") and "extra" not in r]
    classifiers = meta.get_all("Classifier")
    assert {"Framework :: Apache Airflow", "Framework :: Apache Airflow :: Provider"} <= set(classifiers)
    assert meta.get_all("Project-URL")
    with zipfile.ZipFile(wheel[0]) as archive:
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert "[apache_airflow_provider]" in text
    assert f"{PACKAGE}.get_provider_info:get_provider_info" in text


@pytest.mark.deployment
@pytest.mark.timeout(900)
def test_wheel_installs_on_the_floor_airflow_in_a_fresh_virtualenv(wheel, tmp_path):
    """The built wheel, in a new virtualenv with Airflow 3.2.2: Airflow lists the provider and its
    connection type, and the hook imports."""
    venv = tmp_path / "venv"
    uv = [sys.executable, "-m", "uv"]
    subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            *uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            str(wheel[0]),
            FLOOR_AIRFLOW,
            "-c",
            str(FLOOR_CONSTRAINTS),
        ],
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }

    def airflow_json(*args: str) -> list[dict]:
        result = subprocess.run(
            [str(venv / "bin" / "airflow"), *args, "--output", "json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        line = next(x for x in reversed(result.stdout.strip().splitlines()) if x.startswith("["))
        return json.loads(line)

    providers = {row["package_name"]: row for row in airflow_json("providers", "list")}
    assert "airflow-provider-smspartner" in providers
    hooks = {row["connection_type"]: row for row in airflow_json("providers", "hooks")}
    assert hooks["smspartner"]["class"] == f"{PACKAGE}.hooks.smspartner.SmsPartnerHook"
    version = subprocess.run(
        [
            str(python),
            "-c",
            f"import airflow, {PACKAGE}.hooks.smspartner as h; print(airflow.__version__, h.SmsPartnerHook.conn_type)",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert version.returncode == 0, version.stderr[-2000:]
    assert version.stdout.split() == ["3.2.2", "smspartner"]
