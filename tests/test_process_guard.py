"""The suite's own guard: a process a test started and left running is killed before the test's
fixtures are torn down, and the test fails for it (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.conftest import PROJECT_ROOT

LEAKING_TESTS = """
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def drop_after(tmp_path):
    yield
    # What the results-table fixture's DROP TABLE needs: the child gone before this teardown runs.
    pid = int(Path({pid_file!r}).read_text().split()[-1])
    Path({pid_file!r}).write_text(Path({pid_file!r}).read_text() + (" alive" if _alive(pid) else " gone") + "\\n")


def _alive(pid):
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _start():
    child = subprocess.Popen(["sleep", "300"])
    with open({pid_file!r}, "a") as out:
        out.write(f"{{child.pid}} ")
    return child


def test_fails_while_its_child_runs(drop_after):
    _start()
    assert False, "stopped waiting for the child"


def test_passes_but_leaves_its_child(drop_after):
    _start()


def test_stops_its_child(drop_after):
    child = _start()
    child.kill()
    child.wait()
"""


@pytest.mark.slow  # a child interpreter
def test_a_process_left_running_is_killed_before_teardown_and_fails_the_test(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids.txt"
    tests = tmp_path / "test_leaking.py"
    tests.write_text(textwrap.dedent(LEAKING_TESTS.format(pid_file=str(pid_file))))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest", "-q", str(tests)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTEST_ADDOPTS": "", "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = pid_file.read_text().splitlines()
    pids = [int(line.split()[0]) for line in lines]
    # Before each test's fixtures were torn down, its child was gone, except the one it stopped itself.
    assert [line.split()[1] for line in lines] == ["gone", "gone", "gone"], lines
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "1 failed, 2 passed, 2 errors" in run.stdout, run.stdout[-3000:]
    # (With CI set, pytest repeats each message in its short summary: look for the sections.)
    for test, pid in (
        ("test_fails_while_its_child_runs", pids[0]),
        ("test_passes_but_leaves_its_child", pids[1]),
    ):
        assert f"ERROR at teardown of {test} " in run.stdout, run.stdout[-3000:]
        assert f"{test} left 1 process(es) running, killed now: {pid} (sleep 300)" in run.stdout
    assert "ERROR at teardown of test_stops_its_child" not in run.stdout
