"""The wheel: built without warnings, holds every module and ``py.typed``, declares honest floors."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGE = "airflow_provider_smspartner"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Build the wheel as `pip install .` would; return its path and the build's output."""
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(PROJECT_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("*.whl")
    return path, result.stdout + result.stderr


def _metadata(path: Path) -> tuple[list[str], object]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        return names, Parser().parsestr(archive.read(meta_name).decode())


def test_build_prints_no_deprecation_warning(wheel):
    _, output = wheel
    assert "deprecat" not in output.lower(), output[-2000:]


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
