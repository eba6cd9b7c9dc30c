"""SmsPartnerStopListTrigger against the sandbox (and a SQLite warehouse), on a fake clock.

Each test drives the real ``run()`` loop (``tests.helpers.drive_trigger``): the trigger's sleep
advances a fake clock and stops the loop after a number of polls, so "every poll_interval seconds"
and the back-off take no real time. Every poll is a real ``stop-sms/list`` call to the sandbox.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from airflow_provider_smspartner.triggers.smspartner import FAILURE_KINDS, SmsPartnerStopListTrigger
from tests.conftest import PROJECT_ROOT, TEST_API_KEY, smspartner_connection_json
from tests.helpers import (
    FakeClock,
    drive_trigger,
    drop_table,
    live_sha256,
    new_numbers,
    use_connection,
    use_sandbox,
)

CLASSPATH = "airflow_provider_smspartner.triggers.smspartner.SmsPartnerStopListTrigger"
PAYLOAD_KEYS = {"list_sha256", "rows_in_list", "checked_at"}
LIST = "stop-sms/list"


class LogRecorder:
    """Stands for the trigger's logger: keeps ``(level, message)`` of every line."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def log(self, level: int, message: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append((level, message % args if args else message))

    def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.DEBUG, message, *args)

    def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.INFO, message, *args)

    def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.WARNING, message, *args)

    def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, message, *args)

    def at_least(self, level: int) -> list[str]:
        return [message for lvl, message in self.lines if lvl >= level]


class FakeStateStore:
    """The async half of Airflow 3.3's ``AssetStateStoreAccessors`` for one Asset."""

    def __init__(self, values: dict[str, Any] | None = None, broken: bool = False) -> None:
        self.values = dict(values or {})
        self.broken = broken

    async def aget(self, key: str, default: Any = None) -> Any:
        if self.broken:
            raise ValueError("Task has 2 concrete inlets and outlets")
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        if self.broken:
            raise ValueError("Task has 2 concrete inlets and outlets")
        self.values[key] = value


def make_trigger(clock: FakeClock | None = None, **kwargs: Any) -> SmsPartnerStopListTrigger:
    trigger = SmsPartnerStopListTrigger(**kwargs)
    trigger._monotonic = clock or FakeClock()
    trigger._log = LogRecorder()
    return trigger


def logs(trigger: SmsPartnerStopListTrigger) -> LogRecorder:
    return trigger._log  # type: ignore[return-value]


def assert_payload(payload: dict[str, Any], sandbox: Any, warehouse: str | None = "absent") -> None:
    """The payload names the live list (and the copy in warehouse mode), and no phone number."""
    keys = PAYLOAD_KEYS if warehouse == "absent" else PAYLOAD_KEYS | {"warehouse_list_sha256"}
    assert set(payload) == keys
    assert payload["list_sha256"] == live_sha256(sandbox)
    assert payload["rows_in_list"] == len(sandbox.state)
    assert payload["checked_at"].endswith("+00:00")
    if warehouse != "absent":
        assert payload["warehouse_list_sha256"] == warehouse
    text = json.dumps(payload)
    for number in sandbox.state.phone_numbers():
        assert number not in text and number[3:] not in text


# ----------------------------------------------------------------------------------- arguments
class TestArguments:
    def test_defaults(self):
        trigger = SmsPartnerStopListTrigger()
        assert trigger.serialize() == (
            CLASSPATH,
            {
                "smspartner_conn_id": "smspartner_default",
                "poll_interval": 300.0,
                "sql_conn_id": None,
                "table": None,
                "run_log_table": None,
            },
        )
        assert not trigger.warehouse_mode
        assert trigger.run_log is None

    def test_warehouse_mode_resolves_the_run_log(self):
        trigger = SmsPartnerStopListTrigger(sql_conn_id="wh", table="marketing.stops")
        assert trigger.warehouse_mode
        assert trigger.run_log == "marketing.stops_runs"
        custom = SmsPartnerStopListTrigger(sql_conn_id="wh", table="stops", run_log_table="{table}_history")
        assert custom.run_log == "stops_history"

    @pytest.mark.parametrize("interval", [0.5, 1, 59.9, 86400], ids=str)
    def test_any_positive_interval(self, interval):
        assert SmsPartnerStopListTrigger(poll_interval=interval).poll_interval == float(interval)

    @pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf"), True, "300", None], ids=repr)
    def test_bad_interval(self, interval):
        with pytest.raises(ValueError, match="poll_interval must be a number of seconds > 0"):
            SmsPartnerStopListTrigger(poll_interval=interval)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"sql_conn_id": "wh"}, "Give both sql_conn_id and table"),
            ({"table": "stops"}, "Give both sql_conn_id and table"),
            ({"run_log_table": "runs"}, "run_log_table needs table"),
            ({"sql_conn_id": "wh", "table": "stops; DROP TABLE x"}, "Invalid table name"),
            ({"sql_conn_id": "wh", "table": "stops", "run_log_table": "a.b.c"}, "Invalid table name"),
            ({"smspartner_conn_id": ""}, "smspartner_conn_id must be a connection id"),
        ],
        ids=["sql_conn_id_alone", "table_alone", "run_log_alone", "bad_table", "bad_run_log", "no_conn_id"],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            SmsPartnerStopListTrigger(**kwargs)

    def test_is_an_asset_watcher_trigger(self):
        from airflow.sdk import Asset, AssetWatcher

        trigger = SmsPartnerStopListTrigger(sql_conn_id="wh", table="stops")
        asset = Asset("smspartner_stop_list", watchers=[AssetWatcher(name="stale", trigger=trigger)])
        assert asset.watchers[0].trigger is trigger


class TestSerialize:
    KWARGS = {
        "smspartner_conn_id": "smspartner_eu",
        "poll_interval": 120,
        "sql_conn_id": "warehouse",
        "table": "crm.stops",
        "run_log_table": "{table}_log",
    }

    def test_round_trip(self):
        classpath, kwargs = SmsPartnerStopListTrigger(**self.KWARGS).serialize()
        module, _, name = classpath.rpartition(".")
        assert getattr(importlib.import_module(module), name) is SmsPartnerStopListTrigger
        assert kwargs == {**self.KWARGS, "poll_interval": 120.0}
        assert json.loads(json.dumps(kwargs)) == kwargs
        assert SmsPartnerStopListTrigger(**kwargs).serialize() == (classpath, kwargs)

    def test_airflow_identity_is_the_kwargs(self):
        from airflow.triggers.base import BaseEventTrigger

        one = SmsPartnerStopListTrigger(**self.KWARGS).serialize()
        # 120 and 120.0 are one trigger; another poll interval is another.
        same = SmsPartnerStopListTrigger(**{**self.KWARGS, "poll_interval": 120.0}).serialize()
        other = SmsPartnerStopListTrigger(**{**self.KWARGS, "poll_interval": 60}).serialize()
        assert BaseEventTrigger.hash(*one) == BaseEventTrigger.hash(*same)
        assert BaseEventTrigger.hash(*one) != BaseEventTrigger.hash(*other)

    @pytest.mark.slow  # a child interpreter
    def test_equal_kwargs_in_two_interpreters(self):
        """What Airflow hashes (the kwargs as its serializer writes them) is the same bytes in two
        fresh interpreters with different hash seeds."""
        script = (
            "import json\n"
            "from airflow.serialization.serialized_objects import BaseSerialization\n"
            "from airflow_provider_smspartner.triggers.smspartner import SmsPartnerStopListTrigger\n"
            f"classpath, kwargs = SmsPartnerStopListTrigger(**{self.KWARGS!r}).serialize()\n"
            "print(json.dumps([classpath, BaseSerialization.serialize(kwargs)]))\n"
        )
        outputs = []
        for seed in ("1", "2"):
            env = {**os.environ, "PYTHONHASHSEED": seed}
            done = subprocess.run(
                [sys.executable, "-c", script],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                cwd=PROJECT_ROOT,
                check=False,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            outputs.append(done.stdout.strip().splitlines()[-1])
        assert outputs[0] == outputs[1]
        classpath, kwargs = json.loads(outputs[0])
        assert classpath == CLASSPATH
        assert "run_log_table" in json.dumps(kwargs)


# ----------------------------------------------------------------------------------- list mode
class TestListMode:
    def test_no_event_while_nothing_changes(self, sandbox, smspartner_conn):
        trigger = make_trigger()
        assert drive_trigger(trigger, 6) == []
        assert sandbox.stats.count(LIST) == 6  # one list call per poll
        assert any("Baseline" in line for line in logs(trigger).at_least(logging.INFO))

    def test_one_event_per_change(self, sandbox, smspartner_conn):
        trigger = make_trigger()
        assert drive_trigger(trigger, 2) == []  # the first poll is the baseline

        sandbox.state.seed_numbers(new_numbers(1, sandbox))
        (added,) = drive_trigger(trigger, 4)
        assert_payload(added, sandbox)

        stop_id = sandbox.state.list_entries()[0].stop_id
        sandbox.state.remove(stop_id)
        (removed,) = drive_trigger(trigger, 4)
        assert_payload(removed, sandbox)
        assert removed["rows_in_list"] == added["rows_in_list"] - 1
        assert drive_trigger(trigger, 3) == []

    def test_polls_every_interval(self, sandbox, smspartner_conn):
        trigger = make_trigger(poll_interval=300)
        slept: list[float] = []
        original = trigger._sleep

        async def record(seconds: float) -> None:
            slept.append(seconds)
            await original(0)

        trigger._sleep = record
        clock = trigger._monotonic

        async def main() -> None:
            agen = trigger.run()
            task = asyncio.ensure_future(agen.__anext__())
            while len(slept) < 3:
                await asyncio.sleep(0.01)
            task.cancel()

        asyncio.run(main())
        # The fake clock did not move during the polls: each sleep is the whole interval.
        assert clock.now == FakeClock().now
        assert slept[:3] == [300.0, 300.0, 300.0]

    def test_state_store_survives_a_restart(self, sandbox, smspartner_conn):
        store = FakeStateStore()
        first = make_trigger()
        first.asset_state_store = store
        assert drive_trigger(first, 2) == []
        key = "smspartner_list_sha256:smspartner_default"
        assert store.values == {key: live_sha256(sandbox)}

        # The triggerer restarts; meanwhile the list changed: the first poll fires.
        sandbox.state.seed_numbers(new_numbers(1, sandbox))
        second = make_trigger()
        second.asset_state_store = store
        (event,) = drive_trigger(second, 3)
        assert_payload(event, sandbox)
        assert store.values[key] == live_sha256(sandbox)

        # Another restart with nothing new: nothing fires.
        third = make_trigger()
        third.asset_state_store = store
        assert drive_trigger(third, 2) == []

    @pytest.mark.parametrize("store", ["absent", "none", "empty", "broken"])
    def test_without_a_usable_store_the_first_poll_is_the_baseline(self, sandbox, smspartner_conn, store):
        trigger = make_trigger()
        if store == "absent":  # Airflow 3.2: the attribute does not exist
            if hasattr(trigger, "asset_state_store"):
                del trigger.asset_state_store
        elif store == "none":  # 3.3 outside the triggerer (unit tests, dag.test())
            trigger.asset_state_store = None
        else:
            trigger.asset_state_store = FakeStateStore(
                {"smspartner_list_sha256:smspartner_default": ""}, broken=store == "broken"
            )
        assert drive_trigger(trigger, 2) == []
        sandbox.state.seed_numbers(new_numbers(1, sandbox))
        (event,) = drive_trigger(trigger, 3)
        assert_payload(event, sandbox)
        warnings = logs(trigger).at_least(logging.WARNING)
        assert len([w for w in warnings if "state store" in w]) == (1 if store == "broken" else 0)

    def test_fetches_off_the_event_loop_without_a_dataframe(self, sandbox, smspartner_conn, monkeypatch):
        """The loop keeps running while a slow list call is in flight; no frame is built."""
        from airflow_provider_smspartner.api import list_body
        from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook

        def no_frame(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("the trigger built a DataFrame")

        monkeypatch.setattr(list_body, "records_to_frame", no_frame)
        monkeypatch.setattr(SmsPartnerHook, "get_stop_list_df", no_frame)
        sandbox.latency = 0.5
        trigger = make_trigger()
        loop_threads: set[int] = set()
        fetch_threads: set[int] = set()
        original = trigger._fingerprint

        def fingerprint() -> tuple[int, str]:
            fetch_threads.add(threading.get_ident())
            return original()

        trigger._fingerprint = fingerprint  # type: ignore[method-assign]
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            loop_threads.add(threading.get_ident())
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        async def main() -> None:
            tick = asyncio.ensure_future(ticker())
            started = time.monotonic()
            look = await trigger._look()
            tick.cancel()
            assert look is not None and time.monotonic() - started >= 0.5
            assert look.list_sha256 == live_sha256(sandbox)

        asyncio.run(main())
        assert ticks >= 20
        assert fetch_threads and not fetch_threads & loop_threads

    def test_keeps_nothing_of_the_list_between_polls(self, monkeypatch):
        """A large list's Arrow buffers are all released after the poll; the trigger keeps two values."""
        import pyarrow as pa

        from airflow_provider_smspartner.sandbox import SandboxServer

        with SandboxServer(api_key=TEST_API_KEY, seed_stops=200_000, seed=3) as big:
            use_sandbox(monkeypatch, big)
            trigger = make_trigger()
            before = pa.total_allocated_bytes()
            assert drive_trigger(trigger, 1) == []
            assert pa.total_allocated_bytes() - before < 1_000_000
            assert trigger._remembered == live_sha256(big)


# ------------------------------------------------------------------------------ warehouse mode
def extract(sql_conn_id: str, table: str, **kwargs: Any) -> dict[str, Any]:
    from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator

    operator = SmsPartnerStopListToSqlOperator(
        task_id="extract", sql_conn_id=sql_conn_id, table=table, mode="upsert", **kwargs
    )
    return operator.execute(context={})


class TestWarehouseMode:
    def test_fires_until_the_extract_then_falls_quiet(
        self, sandbox, smspartner_conn, warehouse_conn, unique_table
    ):
        trigger = make_trigger(sql_conn_id=warehouse_conn, table=unique_table)
        try:
            # No run log yet: the copy is stale; one event, not one per poll.
            (first,) = drive_trigger(trigger, 4)
            assert_payload(first, sandbox, warehouse=None)

            applied = extract(warehouse_conn, unique_table)["list_sha256"]
            assert drive_trigger(trigger, 4) == []

            sandbox.state.seed_numbers(new_numbers(2, sandbox))
            (changed,) = drive_trigger(trigger, 4)
            assert_payload(changed, sandbox, warehouse=applied)

            extract(warehouse_conn, unique_table)
            assert drive_trigger(trigger, 4) == []
        finally:
            drop_table(warehouse_conn, unique_table)
            drop_table(warehouse_conn, f"{unique_table}_runs")
        assert any("holds the live list again" in line for line in logs(trigger).at_least(logging.INFO))
        assert logs(trigger).at_least(logging.WARNING) == []

    def test_reads_the_run_log_the_extract_was_given(self, sandbox, smspartner_conn, sqlite_conn):
        extract(sqlite_conn, "stops", run_log_table="{table}_history")
        history = make_trigger(sql_conn_id=sqlite_conn, table="stops", run_log_table="{table}_history")
        assert drive_trigger(history, 3) == []
        # The default run log (stops_runs) does not exist: that copy is stale.
        (event,) = drive_trigger(make_trigger(sql_conn_id=sqlite_conn, table="stops"), 3)
        assert event["warehouse_list_sha256"] is None

    def test_a_failing_extract_gets_one_event_per_list_state_then_backs_off(
        self, sandbox, smspartner_conn, sqlite_conn
    ):
        """The list emptied: the extract's guard refuses it at every run; the trigger does not start
        a run at every poll, only after the back-off (1 h, then 2 h...), or when the list changes."""
        from airflow_provider_smspartner.exceptions import StopListGuardError

        extract(sqlite_conn, "stops")
        trigger = make_trigger(sql_conn_id=sqlite_conn, table="stops", poll_interval=300)
        assert drive_trigger(trigger, 2) == []
        for entry in sandbox.state.list_entries():
            sandbox.state.remove(entry.stop_id)
        with pytest.raises(StopListGuardError):
            extract(sqlite_conn, "stops")

        started = trigger._monotonic.now
        events = drive_trigger(trigger, 12)  # 12 polls, 1 h of fake time
        assert len(events) == 1 and events[0]["rows_in_list"] == 0
        events = drive_trigger(trigger, 1)  # 1 h after the event: fired again
        assert len(events) == 1
        assert trigger._monotonic.now - started == 13 * 300
        assert drive_trigger(trigger, 23) == []  # the next one waits 2 h
        assert len(drive_trigger(trigger, 1)) == 1
        assert len([w for w in logs(trigger).at_least(logging.WARNING) if "still stale" in w]) == 2

        sandbox.state.seed_numbers(new_numbers(1, sandbox))  # a new list state: at once
        (changed,) = drive_trigger(trigger, 2)
        assert changed["rows_in_list"] == 1

    def test_restart_fires_once_more_for_a_copy_still_stale(self, sandbox, smspartner_conn, sqlite_conn):
        assert len(drive_trigger(make_trigger(sql_conn_id=sqlite_conn, table="stops"), 3)) == 1
        restarted = make_trigger(sql_conn_id=sqlite_conn, table="stops")
        assert len(drive_trigger(restarted, 3)) == 1

    def test_an_unreadable_warehouse_fires_nothing(self, sandbox, smspartner_conn, monkeypatch, tmp_path):
        monkeypatch.setenv(
            "AIRFLOW_CONN_BROKEN_WH",
            json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "missing" / "dir" / "wh.db")}),
        )
        trigger = make_trigger(sql_conn_id="broken_wh", table="stops")
        assert drive_trigger(trigger, 3) == []
        (warning,) = logs(trigger).at_least(logging.WARNING)
        assert FAILURE_KINDS["warehouse"] in warning


# ------------------------------------------------------------------------------------ failures
def _fail_with(kind: str, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every list call fail in one way (no retries, so a poll fails fast)."""
    if kind == "auth":
        use_connection(
            monkeypatch, smspartner_connection_json(sandbox.base_url, "sk-wrong-key-000000", max_retries=0)
        )
    elif kind == "config":
        monkeypatch.delenv("AIRFLOW_CONN_SMSPARTNER_DEFAULT")
    elif kind == "timeout_or_connection":
        sandbox.slow_seconds = 1.0
        use_sandbox(monkeypatch, sandbox, max_retries=0, timeout=0.2)
        sandbox.inject("slow", count=100, endpoint=LIST)
    else:
        use_sandbox(monkeypatch, sandbox, max_retries=0)
        sandbox.retry_after = "0"
        sandbox.inject({"rate_limit": "rate_limit", "server_error": "server_error"}[kind], 100, LIST)


class TestFailures:
    @pytest.mark.parametrize(
        "kind", ["rate_limit", "server_error", "timeout_or_connection", "auth", "config"]
    )
    def test_a_failed_poll_never_fires_and_is_logged_once(self, sandbox, monkeypatch, kind):
        use_sandbox(monkeypatch, sandbox, max_retries=0)
        trigger = make_trigger()
        assert drive_trigger(trigger, 1) == []  # baseline
        sandbox.state.seed_numbers(new_numbers(1, sandbox))  # a change the failures hide

        _fail_with(kind, sandbox, monkeypatch)
        assert drive_trigger(trigger, 4) == []
        (line,) = logs(trigger).at_least(logging.WARNING)
        level = next(lvl for lvl, message in logs(trigger).lines if message == line)
        assert level == (logging.ERROR if kind in ("auth", "config") else logging.WARNING)
        assert FAILURE_KINDS[kind] in line
        assert TEST_API_KEY not in line and "sk-wrong-key" not in line

        # Back to normal: the change is caught at the next poll, and the recovery is logged.
        sandbox.faults.clear()
        use_sandbox(monkeypatch, sandbox, max_retries=0)
        events = drive_trigger(trigger, 3)
        assert len(events) == 1
        assert_payload(events[0], sandbox)
        assert any("succeed again" in line for line in logs(trigger).at_least(logging.INFO))

    def test_each_kind_is_logged_once_per_streak(self, sandbox, monkeypatch):
        use_sandbox(monkeypatch, sandbox, max_retries=0)
        sandbox.retry_after = "0"
        trigger = make_trigger()
        sandbox.inject("server_error", 2, LIST)
        sandbox.inject("rate_limit", 2, LIST)
        assert drive_trigger(trigger, 4) == []
        assert len(logs(trigger).at_least(logging.WARNING)) == 2
        assert drive_trigger(trigger, 1) == []  # a success ends the streak
        sandbox.inject("server_error", 1, LIST)
        drive_trigger(trigger, 1)
        assert len(logs(trigger).at_least(logging.WARNING)) == 3

    def test_an_unexpected_error_is_logged_and_polling_goes_on(self, sandbox, smspartner_conn, monkeypatch):
        trigger = make_trigger()

        async def broken(look: Any) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(trigger, "_decide", broken)
        assert drive_trigger(trigger, 3) == []
        assert sandbox.stats.count(LIST) == 3
        (error,) = logs(trigger).at_least(logging.ERROR)
        assert FAILURE_KINDS["unexpected"] in error and "a bug" in error

    def test_warns_about_the_budget_below_a_minute(self, sandbox, smspartner_conn):
        fast = make_trigger(poll_interval=10)
        drive_trigger(fast, 1)
        (warning,) = logs(fast).at_least(logging.WARNING)
        assert "poll_interval=10 s" in warning and "8640 calls a day" in warning
        slow = make_trigger(poll_interval=60)
        drive_trigger(slow, 1)
        assert logs(slow).at_least(logging.WARNING) == []
