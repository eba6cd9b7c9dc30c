"""Helpers shared by the benchmark scripts: the sandbox as a subprocess, CPU and memory readings."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-key"
READY = re.compile(r"SMS Partner sandbox listening on (\S+) \((\d+) stops\)")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (Linux /proc only; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SERVER_PIDS: list[int] = []


@contextmanager
def sandbox_process(
    seed_stops: int, startup_timeout: float = 120.0, extra_args: Sequence[str] = ()
) -> Iterator[str]:
    """Run the sandbox CLI on a free loopback port; yield its base URL; always stop it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "airflow_provider_smspartner.sandbox", "--port", "0"]
    command += ["--api-key", API_KEY, "--seed-stops", str(seed_stops), *extra_args]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(startup_timeout):
            raise RuntimeError(f"sandbox did not start within {startup_timeout} s")
        selector.close()
        match = READY.search(process.stdout.readline())
        if not match:
            raise RuntimeError("unexpected sandbox startup line")
        SERVER_PIDS.append(process.pid)
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_measured(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[str, int]:
    """Run ``argv`` to completion; return its stdout and its peak resident memory in bytes.

    Each measured approach runs in its own process so its peak memory is its own (``wait4``
    reports the child's maximum RSS), not the benchmark driver's.
    """
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
    process = subprocess.Popen(list(argv), cwd=REPO_ROOT, env=child_env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}")
    return output, usage.ru_maxrss * 1024  # Linux reports kilobytes
