"""A try killed mid-run, then the next try: the list is right and so is the record.

Over real loopback HTTP (the sandbox, with latency) and real databases: the task process is
SIGKILLed at several points, or stopped by Airflow's own ``execution_timeout`` under a real
``dag.test()``; the next try of the task instance settles what the killed ones left pending.
The guarantee checked: every valid number is on the list exactly once, every input has one final
outcome in the latest try, and the ``added`` rows across tries are exactly the adds the API applied.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowTaskTerminated

from airflow_provider_smspartner.bulk.results import ResultsTable, TaskIdentity, final_outcomes_sql
from airflow_provider_smspartner.operators.smspartner import (
    SmsPartnerAddStopsOperator,
    SmsPartnerRemoveStopsOperator,
)
from tests.conftest import PROJECT_ROOT
from tests.helpers import (
    listed_once,
    new_numbers,
    query_frame,
    read_results,
    status_counts,
    ti_context,
    use_sandbox,
)

NOW = pd.Timestamp("2026-01-02T03:04:05Z")
FINAL_STATUSES = {"invalid", "duplicate", "skipped_existing", "added", "already_present"}


def _final(conn_id: str, table: str) -> pd.DataFrame:
    return query_frame(conn_id, f"SELECT * FROM ({final_outcomes_sql(table)}) f ORDER BY input_row")


def _check_the_record(
    api: Any, conn_id: str, table: str, inputs: list[Any], new: list[str], latest: int
) -> None:
    """The guarantee, as the compliance team reads it."""
    assert listed_once(api, new)
    rows = read_results(conn_id, table)
    last = rows[rows["try_number"] == latest]
    assert sorted(last["input_row"]) == list(range(len(inputs)))
    assert set(last["status"]) <= FINAL_STATUSES, status_counts(last)
    assert "pending" not in set(rows["status"]), "an earlier try's pending row was never settled"
    added = rows[rows["status"] == "added"]
    assert len(added) == api.stats.adds_applied == len(new)
    assert sorted(added["phone_e164"]) == sorted(new)
    assert added["stop_id"].notna().all()
    final = _final(conn_id, table)
    assert final["input_row"].tolist() == list(range(len(inputs)))
    assert set(final.loc[final["phone_e164"].isin(new) & ~final["status"].eq("duplicate"), "status"]) == {
        "added"
    }


class TestRecovery:
    def test_pending_rows_of_a_killed_try_are_settled(self, api, results_db):
        """Try 1 recorded 6 inputs pending and died; 3 of its adds had landed. Try 2 records those 3
        ``added`` under try 1, sends the other 3 itself, and skips nothing it should not."""
        conn_id, table = results_db
        numbers = new_numbers(6, api)
        identity = TaskIdentity("bulk_dag", "manual__2026-01-01", "add_stops", -1, 1)
        killed = ResultsTable(conn_id, table).prepare(identity)
        killed.insert(
            [
                killed._row_tuple(i, n, n, "pending", None, None, None, None, NOW)
                for i, n in enumerate(numbers)
            ]
        )
        killed.close()
        api.state.seed_numbers(numbers[:3])  # what try 1's calls applied before the kill
        api.reset_stats()
        summary = SmsPartnerAddStopsOperator(
            task_id="add_stops", phone_numbers=numbers, results_table=table, results_conn_id=conn_id
        ).execute(ti_context(2))
        assert (summary["skipped_existing"], summary["added"]) == (3, 3)
        assert api.stats.count("stop-sms/add") == 3
        rows = read_results(conn_id, table).sort_values(["try_number", "input_row"])
        first = rows[rows["try_number"] == 1]
        assert first["status"].tolist() == ["added"] * 3 + ["not_processed"] * 3
        assert first["stop_id"].tolist()[:3] == [api.state.get_id(n) for n in numbers[:3]]
        assert first["note"].str.contains("try 1 ended before recording its outcome").all()
        second = rows[rows["try_number"] == 2]
        assert second["status"].tolist() == ["skipped_existing"] * 3 + ["added"] * 3
        assert set(second["note"].iloc[:3]) == {"added by try 1 of this task instance"}
        final = _final(conn_id, table)
        assert final["status"].tolist() == ["added"] * 6
        assert final["decided_by_try"].tolist() == [1, 1, 1, 2, 2, 2]

    def test_pending_removals_of_a_killed_try_are_settled(self, api, sqlite_conn):
        numbers = sorted(api.state.phone_numbers())[:4]
        ids = [api.state.get_id(n) for n in numbers]
        identity = TaskIdentity("bulk_dag", "manual__2026-01-01", "remove_stops", -1, 1)
        killed = ResultsTable(sqlite_conn, "removals").prepare(identity)
        killed.insert(
            [
                killed._row_tuple(i, n, n, "pending", ids[i], None, None, None, NOW)
                for i, n in enumerate(numbers)
            ]
        )
        killed.close()
        for stop_id in ids[:2]:  # try 1's deletes that landed
            api.state.remove(stop_id)
        summary = SmsPartnerRemoveStopsOperator(
            task_id="remove_stops",
            phone_numbers=numbers,
            results_table="removals",
            results_conn_id=sqlite_conn,
        ).execute(ti_context(2, task_id="remove_stops"))
        assert (summary["not_on_list"], summary["removed"]) == (2, 2)
        rows = read_results(sqlite_conn, "removals").sort_values(["try_number", "input_row"])
        assert rows["status"].tolist() == [
            *["removed", "removed", "not_processed", "not_processed"],
            *["not_on_list", "not_on_list", "removed", "removed"],
        ]
        assert _final(sqlite_conn, "removals")["status"].tolist() == ["removed"] * 4


def _inputs(api: Any, count: int) -> tuple[list[Any], list[str]]:
    """``count`` new numbers mixed with junk, repeats and numbers already listed."""
    new = new_numbers(count, api)
    listed = sorted(api.state.phone_numbers())[:3]
    inputs: list[Any] = list(new)
    for i in range(0, count, 100):  # junk, a repeat and a listed number every 100 inputs
        inputs[i:i] = ["junk", new[i], listed[(i // 100) % 3]]
    return inputs, new


def _start_try(
    tmp_path: Path, try_number: int, conn_id: str, table: str, execution_timeout: float | None = None
) -> subprocess.Popen[str]:
    """Try ``try_number`` in a child process (``bulk_child``); its output goes to ``try<N>.log``."""
    args = {
        "numbers_path": str(tmp_path / "numbers.json"),
        "results_table": table,
        "results_conn_id": conn_id,
        "try_number": try_number,
        "max_workers": 16,
        "execution_timeout": execution_timeout,
    }
    with (tmp_path / f"try{try_number}.log").open("w") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.bulk.bulk_child", json.dumps(args)],
            cwd=PROJECT_ROOT,
            env=dict(os.environ),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _kill_when(process: subprocess.Popen[str], api: Any, adds: int, log: Path, timeout: float = 90.0) -> int:
    """SIGKILL ``process`` once the sandbox has applied ``adds`` adds in all; return the count then."""
    _wait_for_adds(process, api, adds, timeout, log)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(0.5)  # the requests in flight at the kill still land (the API applies them regardless)
    return api.stats.adds_applied


@pytest.mark.slow  # a child interpreter
class TestSigkill:
    def test_killed_three_times_then_the_next_try(self, sandbox, monkeypatch, tmp_path, results_db):
        """3,000 numbers at ~800 adds/s with 20 ms latency and 1 % lost answers; the task process is
        SIGKILLed after 200 adds, after 1,200, and right after its first add; try 4 completes."""
        conn_id, table = results_db
        sandbox.latency = 0.02
        sandbox.fault_rates = {"lost_response": 0.01}
        sandbox.fault_endpoints = {"stop-sms/add"}
        use_sandbox(monkeypatch, sandbox, requests_per_second=1500)
        inputs, new = _inputs(sandbox, 3000)
        (tmp_path / "numbers.json").write_text(json.dumps(inputs))
        killed_at = []
        for try_number, adds in ((1, 200), (2, 1200), (3, None)):
            process = _start_try(tmp_path, try_number, conn_id, table)
            killed_at.append(
                _kill_when(
                    process,
                    sandbox,
                    adds or sandbox.stats.adds_applied + 1,
                    tmp_path / f"try{try_number}.log",
                )
            )
        assert killed_at[-1] < len(new), killed_at
        written = read_results(conn_id, table)
        assert set(written["try_number"]) == {1, 2, 3}, "a killed try had recorded nothing"

        summary = SmsPartnerAddStopsOperator(
            task_id="add_stops",
            phone_numbers=inputs,
            results_table=table,
            results_conn_id=conn_id,
            max_workers=16,
        ).execute(ti_context(4))
        assert summary["failed"] == 0
        assert summary["added"] + summary["skipped_existing"] - 3 == len(new)  # 3 listed numbers
        _check_the_record(sandbox, conn_id, table, inputs, new, latest=4)


#: What the inputs of a try stopped mid-run end in: each call it sent recorded as what it was, each
#: input it never sent ``not_processed``; never ``pending``.
STOPPED_STATUSES = FINAL_STATUSES | {"not_processed"}
#: Seconds Airflow's supervisor waits after SIGTERM before it sends SIGKILL (``escalation_delay``).
SIGKILL_AFTER = 5.0
#: Adds the API has applied when the test stops the try: 1.5 s into the adds at 400 a second,
#: 2,400 short of the end, whatever the load did to the seconds before the first add.
STOP_AFTER_ADDS = 600
#: The try's own ``execution_timeout``: a backstop only, far beyond the run (the test fires the
#: timeout itself, after ``STOP_AFTER_ADDS`` adds).
BACKSTOP_TIMEOUT = 600.0


def _stop_when(
    process: subprocess.Popen[str], api: Any, adds: int, sig: int, log: Path, within: float = 90.0
) -> None:
    """Send ``sig`` to ``process`` once the sandbox has applied ``adds`` adds in all (``within``
    seconds from now at most)."""
    _wait_for_adds(process, api, adds, within, log)
    process.send_signal(sig)


def _wait_for_adds(process: subprocess.Popen[str], api: Any, adds: int, within: float, log: Path) -> None:
    """Return once the sandbox has applied ``adds`` adds in all; if the try ends first or makes no
    progress within ``within`` seconds, kill it (it must not outlive the test, holding its database
    connections) and fail."""
    deadline = time.monotonic() + within
    while api.stats.adds_applied < adds:
        ended = process.poll() is not None
        if ended or time.monotonic() >= deadline:
            process.kill()
            process.wait()
            output = log.read_text()[-3000:]
            problem = f"the try ended (exit {process.returncode})" if ended else "the try made no progress"
            pytest.fail(f"{problem} before {adds} adds ({api.stats.adds_applied} applied)\n{output}")
        time.sleep(0.002)


@pytest.mark.slow  # a child interpreter
class TestStoppedOnTheWayOut:
    """SIGTERM (the task runner calls ``on_kill``) or ``execution_timeout`` mid-run: the try records
    every outcome on the way out, within Airflow's grace before SIGKILL; only SIGKILL leaves
    ``pending`` rows.

    Both stops land after ``STOP_AFTER_ADDS`` adds, not after a fixed time: under load, preparing
    the results table (a CREATE TABLE on MariaDB) took more than a 3 s ``execution_timeout``, which
    then fired before the first add. The timeout is Airflow's own (``timeout()``, as the task runner
    runs ``execute``: its SIGALRM handler raises ``AirflowTaskTimeout`` in the main thread wherever
    it is); the test fires it by sending the SIGALRM its timer would send. After SIGTERM the test
    SIGKILLs the try when Airflow would, ``SIGKILL_AFTER`` s later: what must be done by then is the
    way out, not the exit of the interpreter (whose teardown alone took seconds under load).
    """

    @pytest.mark.parametrize("stop", ["sigterm", "execution_timeout"])
    def test_every_input_has_its_outcome(self, stop, sandbox, monkeypatch, tmp_path, results_db):
        conn_id, table = results_db
        sandbox.latency = 0.02
        use_sandbox(monkeypatch, sandbox, requests_per_second=400)  # 3,000 adds take 7.5 s
        inputs, new = _inputs(sandbox, 3000)
        (tmp_path / "numbers.json").write_text(json.dumps(inputs))
        timeout = BACKSTOP_TIMEOUT if stop == "execution_timeout" else None
        process = _start_try(tmp_path, 1, conn_id, table, execution_timeout=timeout)
        sig = signal.SIGTERM if stop == "sigterm" else signal.SIGALRM
        _stop_when(process, sandbox, STOP_AFTER_ADDS, sig, tmp_path / "try1.log")
        if stop == "sigterm":
            # As Airflow's supervisor does: SIGKILL once SIGKILL_AFTER seconds have passed. The way
            # out must be over by then (``@@raised`` is printed after it); the interpreter's own
            # teardown may not be (it took 2.5 to 8 s on two loaded CPUs) and loses nothing to it.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=SIGKILL_AFTER)
            process.kill()
            process.wait()
        else:  # no SIGKILL follows a timeout
            try:
                process.wait(timeout=120)
            finally:
                process.kill()  # a no-op once it has ended
                process.wait()
        output = (tmp_path / "try1.log").read_text()
        raised = "AirflowTaskTerminated" if stop == "sigterm" else "AirflowTaskTimeout"
        assert f"@@raised {raised}" in output, (
            f"the try's way out had not ended ({stop}; SIGKILL follows SIGTERM after {SIGKILL_AFTER} s)",
            output[-3000:],
        )
        applied = sandbox.stats.adds_applied
        assert STOP_AFTER_ADDS <= applied < len(new), (
            "the try was not stopped mid-run: the test proves nothing"
        )

        rows = read_results(conn_id, table)
        assert sorted(rows["input_row"]) == list(range(len(inputs))), "an input has no outcome"
        counts = status_counts(rows)
        assert "pending" not in counts, counts
        assert set(counts) <= STOPPED_STATUSES, counts
        assert counts["added"] == applied, counts  # every add the API applied, and only those
        assert counts["not_processed"] == len(new) - applied, counts

        summary = SmsPartnerAddStopsOperator(
            task_id="add_stops", phone_numbers=inputs, results_table=table, results_conn_id=conn_id
        ).execute(ti_context(2))
        assert (summary["added"], summary["failed"]) == (len(new) - applied, 0)
        _check_the_record(sandbox, conn_id, table, inputs, new, latest=2)


DAG_FILE = """
import json
from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG

from airflow_provider_smspartner.operators.smspartner import SmsPartnerAddStopsOperator

with DAG("bulk_timeout", schedule=None):
    SmsPartnerAddStopsOperator(
        task_id="add_stops",
        phone_numbers=json.loads((Path(__file__).parent / "numbers.json").read_text()),
        results_table={table!r},
        results_conn_id={conn_id!r},
        max_workers=8,
        execution_timeout=timedelta(seconds={timeout}),
        retries=3,
        retry_delay=timedelta(seconds=0),
    )
"""

RUN_DAG = """
import sys
from airflow.utils import db
db.resetdb()
from airflow.dag_processing.dagbag import DagBag
run = DagBag(sys.argv[1]).get_dag("bulk_timeout").test()
print("@@state", run.state, run.run_id, flush=True)
"""


#: Adds applied when the test fires try 1's ``execution_timeout`` under ``dag.test()`` (of 1,500, at
#: 250 a second: 1.2 s into the adds, 4.8 s short of their end).
TIMEOUT_AFTER_ADDS = 300


class TestExecutionTimeout:
    @pytest.mark.slow  # a child interpreter
    def test_timed_out_try_then_its_retry_under_dag_test(self, sandbox, monkeypatch, tmp_path, sqlite_conn):
        """Airflow's own ``execution_timeout`` stops try 1 mid-run under a real ``dag.test()``; the
        record is there and Airflow's retry completes it.

        The task runs ``execute`` under Airflow's ``timeout()`` (in ``dag.test()``'s process, main
        thread); the test fires it once try 1 has made ``TIMEOUT_AFTER_ADDS`` adds, by sending the
        SIGALRM its timer would send. The timeout itself is long (``BACKSTOP_TIMEOUT``): with a fixed
        4 s one, load decided how much of it try 1's start ate and whether four tries' worth of adds
        finished the list (the DAG run failed once with ``-n 4`` under load).
        """
        use_sandbox(monkeypatch, sandbox, requests_per_second=250)
        sandbox.latency = 0.02
        inputs, new = _inputs(sandbox, 1500)
        dags = tmp_path / "dags"
        dags.mkdir()
        (dags / "numbers.json").write_text(json.dumps(inputs))
        (dags / "bulk_timeout.py").write_text(
            textwrap.dedent(DAG_FILE.format(table="adds", conn_id=sqlite_conn, timeout=BACKSTOP_TIMEOUT))
        )
        home = tmp_path / "airflow_home"
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        }
        home.mkdir()
        log = tmp_path / "dag_test.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [sys.executable, "-c", RUN_DAG, str(dags)],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
            )
        try:
            _stop_when(process, sandbox, TIMEOUT_AFTER_ADDS, signal.SIGALRM, log, within=300)
            process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        output = log.read_text()
        state = [line for line in output.splitlines() if line.startswith("@@state")]
        assert state and state[0].split()[1] == "success", output[-6000:]
        assert "AirflowTaskTimeout" in output or "timed out" in output
        rows = read_results(sqlite_conn, "adds")
        tries = sorted(set(rows["try_number"]))
        assert tries == [1, 2], "try 1 did not time out, or its retry did not complete the run"
        first = rows[rows["try_number"] == 1]
        assert TIMEOUT_AFTER_ADDS <= (first["status"] == "added").sum() < len(new), status_counts(first)
        # The timed-out try recorded every input on its way out: none left for the retry to settle.
        assert sorted(first["input_row"]) == list(range(len(inputs)))
        assert not first["note"].str.contains("ended before recording", na=False).any(), status_counts(first)
        run_id = state[0].split()[2]
        assert set(rows["run_id"]) == {run_id} and set(rows["dag_id"]) == {"bulk_timeout"}
        _check_the_record(sandbox, sqlite_conn, "adds", inputs, new, latest=tries[-1])

    def test_on_kill_outside_a_run_or_the_main_thread_does_nothing(self):
        """Airflow calls ``on_kill`` after ``execution_timeout`` too, once ``execute`` has ended."""
        op = SmsPartnerAddStopsOperator(task_id="add_stops", phone_numbers=["+33612345678"])
        op.on_kill()
        op._stoppable = True  # as while execute runs
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                op.on_kill()
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert not errors
        with pytest.raises(AirflowTaskTerminated, match="received SIGTERM"):
            op.on_kill()
        op.on_kill()  # a second SIGTERM does not break the way out
