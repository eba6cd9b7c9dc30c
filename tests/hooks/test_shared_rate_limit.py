"""SmsPartnerHook's rate budget over real loopback HTTP (the sandbox) and the real Redis.

Issue 12: the configured rate is reached (7/s gives 7/s within 3 %), per process and shared by a
fleet; a shared budget is never exceeded by several processes together; a 429 pauses every
process; Redis unreachable is a clear error, never a silent per-process budget; retries are
logged as summaries; nothing warns about deprecations.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator

import pytest

from airflow_provider_smspartner.api import rate_limit
from airflow_provider_smspartner.api.rate_limit import redis_keys
from airflow_provider_smspartner.api.retry_log import RetrySummaryLog
from airflow_provider_smspartner.api.throttle import HEADROOM
from airflow_provider_smspartner.exceptions import (
    SmsPartnerConfigError,
    SmsPartnerConnectionError,
    SmsPartnerRetryAfterTooLongError,
)
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.sandbox import SandboxServer
from tests.conftest import PROJECT_ROOT, TEST_API_KEY, smspartner_connection_json
from tests.helpers import free_port, max_in_window, use_connection

#: The Redis database of these tests (Celery's broker uses 0).
REDIS_DB = 11
REDIS_CONN_ID = "smspartner_tests_redis"


def _redis_connection(port: int = 6379, conn_type: str = "redis") -> str:
    return json.dumps({"conn_type": conn_type, "host": "127.0.0.1", "port": port, "extra": {"db": REDIS_DB}})


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch, redis_server: tuple[str, int]) -> Iterator[str]:
    """A shared budget name of its own, and the Redis connection; its keys are deleted afterwards."""
    import redis

    monkeypatch.setenv(f"AIRFLOW_CONN_{REDIS_CONN_ID.upper()}", _redis_connection())
    key = f"test-smspartner-{uuid.uuid4().hex[:12]}"
    yield key
    client = redis.Redis(port=6379, db=REDIS_DB)
    client.delete(*redis_keys(key))
    client.close()


def _shared(sandbox: SandboxServer, key: str, **extras: object) -> str:
    return smspartner_connection_json(
        sandbox.base_url, rate_limit_redis_conn_id=REDIS_CONN_ID, rate_limit_key=key, **extras
    )


def _add_in_threads(hook: SmsPartnerHook, numbers: list[str], threads: int) -> None:
    pending = iter(numbers)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                number = next(pending, None)
            if number is None:
                return
            hook.add_stop(number)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def _numbers(count: int, prefix: str) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


def _slope(times: list[float]) -> float:
    """Requests per second: least-squares slope of the request count over time (robust to the ends)."""
    times = sorted(times)
    n = len(times)
    mean_t, mean_i = sum(times) / n, (n - 1) / 2
    cov = sum((t - mean_t) * (i - mean_i) for i, t in enumerate(times))
    return cov / sum((t - mean_t) ** 2 for t in times)


def _log_lines(capfd: pytest.CaptureFixture[str], text: str) -> list[str]:
    """The task-log lines holding ``text`` (Airflow's logging writes them to stdout or stderr)."""
    captured = capfd.readouterr()
    return [line for line in (captured.out + captured.err).splitlines() if text in line]


def _add_times(sandbox: SandboxServer) -> list[float]:
    return [t for t, endpoint in sandbox.stats.timestamps if endpoint == "stop-sms/add"]


# A worker process of the fleet: a hook on `conn_id`, ready once its rate limit is resolved (Redis
# pinged), then adds `numbers` from `threads` threads when told to go.
_WORKER = r"""
import json, sys, threading
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
args = json.loads(sys.argv[1])
hook = SmsPartnerHook(args["conn_id"])
hook.get_conn()
print("ready", flush=True)
sys.stdin.readline()
pending, lock = iter(args["numbers"]), threading.Lock()
def work():
    while True:
        with lock:
            number = next(pending, None)
        if number is None:
            return
        hook.add_stop(number)
threads = [threading.Thread(target=work) for _ in range(args["threads"])]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
hook.close()
print("done", flush=True)
"""


class Workers:
    """Worker processes (as Celery workers or mapped tasks would be), started together."""

    def __init__(self, conn_id: str, chunks: list[list[str]], threads: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        self.children = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WORKER,
                    json.dumps({"conn_id": conn_id, "numbers": chunk, "threads": threads}),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=PROJECT_ROOT,
            )
            for chunk in chunks
        ]

    def __enter__(self) -> Workers:
        for child in self.children:
            assert child.stdout is not None
            for line in child.stdout:  # Airflow may log to stdout first
                if line.strip() == "ready":
                    break
            else:
                pytest.fail(f"a worker exited before it was ready: {child.wait()}")
        return self

    def go(self) -> None:
        for child in self.children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()

    def wait(self) -> None:
        for child in self.children:
            child.communicate(timeout=120)
            assert child.returncode == 0

    def __exit__(self, *exc_info: object) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()


class TestRateAccuracy:
    @pytest.mark.parametrize("shared", [False, True], ids=["per-process", "shared"])
    def test_7_per_second_gives_7_per_second(self, monkeypatch, sandbox, budget, shared):
        # Issue 12: a configured 7/s gave 6.0/s. Requests are spaced 2 % under the rate, on purpose.
        conn = _shared(sandbox, budget, requests_per_second=7) if shared else None
        conn = conn or smspartner_connection_json(sandbox.base_url, requests_per_second=7)
        conn_id = f"rate_{uuid.uuid4().hex[:8]}"  # a throttle of its own
        use_connection(monkeypatch, conn, conn_id)
        hook = SmsPartnerHook(conn_id)
        _add_in_threads(hook, _numbers(50, "+336410"), threads=4)
        times = _add_times(sandbox)
        assert len(times) == 50
        assert _slope(times) == pytest.approx(7, rel=0.03)
        assert _slope(times) == pytest.approx(7 * HEADROOM, rel=0.015)


class TestFleet:
    @pytest.mark.slow  # a child interpreter
    def test_worker_processes_share_one_budget(self, monkeypatch, budget):
        # Three processes with 4 threads each, 28/s between them (alone, each would send 28/s),
        # against a server limited to 30/s, as the deployment test runs it: the margin absorbs the
        # jitter between a request's release and its arrival (56 ms before a 31st could arrive in
        # a second).
        with SandboxServer(api_key=TEST_API_KEY, rate_limit=30) as sandbox:
            use_connection(monkeypatch, _shared(sandbox, budget, requests_per_second=28))
            chunks = [_numbers(50, f"+33642{i}") for i in range(3)]
            with Workers("smspartner_default", chunks, threads=4) as workers:
                workers.go()
                workers.wait()
            stats = sandbox.stats.as_dict()
            times = _add_times(sandbox)
        assert stats["adds_applied"] == 150
        assert stats["status_counts"].get("429", 0) == 0
        assert stats["busiest_second"] <= 30
        assert _slope(times) == pytest.approx(28 * HEADROOM, rel=0.03)

    def test_connections_with_one_key_share_one_budget(self, monkeypatch, sandbox, budget):
        # Two connections behind one IP address: the same rate_limit_key, so 20/s between them.
        for conn_id in ("sms_a", "sms_b"):
            use_connection(monkeypatch, _shared(sandbox, budget, requests_per_second=20), conn_id)
        threads = [
            threading.Thread(target=_add_in_threads, args=(SmsPartnerHook(c), _numbers(30, p), 3))
            for c, p in (("sms_a", "+336430"), ("sms_b", "+336431"))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        times = _add_times(sandbox)
        assert len(times) == 60
        # Released at most 20 in any second; +1 for the jitter between release and arrival (the
        # sandbox shares this process's GIL with both hooks' six threads).
        assert max_in_window(times) <= 21
        # Not 2 x 20/s: one budget.
        assert _slope(times) == pytest.approx(20 * HEADROOM, rel=0.03)

    @pytest.mark.slow  # a child interpreter
    def test_a_429_pauses_every_process(self, monkeypatch, budget):
        with SandboxServer(api_key=TEST_API_KEY, retry_after="1") as sandbox:
            use_connection(monkeypatch, _shared(sandbox, budget, requests_per_second=20))
            with Workers("smspartner_default", [_numbers(60, "+336440")], threads=2) as workers:
                workers.go()
                while sandbox.stats.count("stop-sms/add") < 10:
                    time.sleep(0.02)
                # This process meets a 429 with Retry-After: 1; the worker must hold back too.
                sandbox.inject("rate_limit", endpoint="me")
                SmsPartnerHook().get_account()
                workers.wait()
            stamps = sandbox.stats.timestamps
        limited, retried = [t for t, endpoint in stamps if endpoint == "me"]
        assert retried - limited >= 0.95
        held = [
            t for t, endpoint in stamps if endpoint == "stop-sms/add" and limited + 0.15 < t < limited + 0.95
        ]
        assert held == []
        adds = [t for t, endpoint in stamps if endpoint == "stop-sms/add"]
        assert min(adds) < limited < limited + 1.0 <= max(adds)  # the worker was busy before and after
        assert sandbox.stats.adds_applied == 60


class TestOneRatePerBudget:
    """Issue 19: two connections on one ``rate_limit_key`` with different ``requests_per_second``
    starved one of them (5 of 5 runs). The budget's rate lives in Redis; another rate is refused."""

    def _use(self, monkeypatch, sandbox, budget, conn_id: str, rate: float) -> SmsPartnerHook:
        use_connection(monkeypatch, _shared(sandbox, budget, requests_per_second=rate), conn_id)
        return SmsPartnerHook(conn_id)

    def test_another_rate_is_refused_before_any_request_naming_both_connections(
        self, monkeypatch, sandbox, budget
    ):
        self._use(monkeypatch, sandbox, budget, "sms_fast", 20).get_account()
        sent = sandbox.stats.total
        with pytest.raises(SmsPartnerConfigError) as raised:
            self._use(monkeypatch, sandbox, budget, "sms_slow", 5).get_account()
        assert sandbox.stats.total == sent
        message = str(raised.value)
        for part in (
            "connection 'sms_slow'",
            "requests_per_second=5",
            "connection 'sms_fast'",
            "requests_per_second=20",
            f"rate_limit_key {budget!r}",
            "another rate_limit_key",
        ):
            assert part in message, (part, message)
        assert re.search(r"expires in \d+ s", message), message
        assert TEST_API_KEY not in message
        # The same rate joins the budget.
        self._use(monkeypatch, sandbox, budget, "sms_same", 20).get_account()

    def test_the_connection_that_set_the_rate_may_change_it_at_once(self, monkeypatch, sandbox, budget):
        running = self._use(monkeypatch, sandbox, budget, "sms_owner", 20)
        running.get_account()
        self._use(monkeypatch, sandbox, budget, "sms_other", 20).get_account()
        # The owner's connection is edited: its next task runs at 10/s at once.
        self._use(monkeypatch, sandbox, budget, "sms_owner", 10).get_account()
        self._use(monkeypatch, sandbox, budget, "sms_joiner", 10).get_account()
        sent = sandbox.stats.total
        # A connection still at 20, and the task that started before the edit, are refused.
        with pytest.raises(SmsPartnerConfigError, match=r"'sms_other'.*requests_per_second=20.*=10"):
            self._use(monkeypatch, sandbox, budget, "sms_other", 20).get_account()
        with pytest.raises(SmsPartnerConfigError, match=r"'sms_owner'.*requests_per_second=20.*=10"):
            running.get_account()
        assert sandbox.stats.total == sent

    def test_a_changed_rate_takes_effect_once_the_old_one_expires(self, monkeypatch, sandbox, budget):
        monkeypatch.setattr(rate_limit, "RATE_TTL", 1.0)
        first = self._use(monkeypatch, sandbox, budget, "sms_first", 20)
        first.get_account()
        with pytest.raises(SmsPartnerConfigError):
            self._use(monkeypatch, sandbox, budget, "sms_second", 5).get_account()
        time.sleep(1.3)  # nobody used the budget for longer than its rate lives
        self._use(monkeypatch, sandbox, budget, "sms_second", 5).get_account()
        with pytest.raises(
            SmsPartnerConfigError, match=r"'sms_first'.*=20.*=5, set by connection 'sms_second'"
        ):
            first.get_account()


class TestLongRetryAfterStopsTheFleet:
    def test_every_connection_of_the_budget_fails_at_once_without_a_request(
        self, monkeypatch, sandbox, budget
    ):
        # Issue 19: a Retry-After of hours was capped at 60 s, so the fleet knocked again every
        # minute. Beyond max_retry_after the pause is kept in Redis: every process (here another
        # connection of the budget, whose limiter is its own) fails at once until it ends.
        for conn_id in ("sms_met_it", "sms_other_task"):
            use_connection(monkeypatch, _shared(sandbox, budget, requests_per_second=20), conn_id)
        sandbox.retry_after = "7200"
        sandbox.inject("rate_limit", endpoint="me")
        with pytest.raises(SmsPartnerRetryAfterTooLongError):
            SmsPartnerHook("sms_met_it").get_account()
        sent = sandbox.stats.total
        with pytest.raises(SmsPartnerRetryAfterTooLongError) as raised:
            SmsPartnerHook("sms_other_task").add_stop("+33655443322")
        assert sandbox.stats.total == sent
        assert 7100 < raised.value.retry_after <= 7200
        assert re.search(
            r"max_retry_after=300 of connection 'sms_other_task'; retry after \S+Z", str(raised.value)
        )

    def test_a_connection_that_waits_longer_waits_it_out(self, monkeypatch, sandbox, budget):
        for conn_id, max_retry_after in (("sms_short", 1), ("sms_patient", 5)):
            extras = {"requests_per_second": 20, "max_retry_after": max_retry_after}
            use_connection(monkeypatch, _shared(sandbox, budget, **extras), conn_id)
        sandbox.retry_after = "2"
        sandbox.inject("rate_limit", endpoint="me")
        with pytest.raises(SmsPartnerRetryAfterTooLongError):
            SmsPartnerHook("sms_short").get_account()
        started = time.monotonic()
        SmsPartnerHook("sms_patient").get_account()  # 2 s <= its max_retry_after: waits, then sends
        assert time.monotonic() - started >= 1.5  # a lower bound: sleeps are never shorter
        assert sandbox.stats.count("me") == 2


class TestRedisProblemsFailClearly:
    def test_unreachable_redis_is_an_error_and_nothing_is_sent(self, monkeypatch, sandbox, budget):
        port = free_port()
        monkeypatch.setenv("AIRFLOW_CONN_REDIS_DOWN", _redis_connection(port))
        use_connection(
            monkeypatch,
            smspartner_connection_json(
                sandbox.base_url, max_retries=0, rate_limit_redis_conn_id="redis_down"
            ),
        )
        message = (
            rf"Redis connection 'redis_down' \(127.0.0.1:{port}, db {REDIS_DB}\) failed.*no request is sent"
        )
        with pytest.raises(SmsPartnerConnectionError, match=message):
            SmsPartnerHook().get_account()
        assert SmsPartnerHook().test_connection()[0] is False
        assert sandbox.stats.total == 0

    def test_undefined_redis_connection(self, monkeypatch, sandbox):
        monkeypatch.delenv("AIRFLOW_CONN_REDIS_NOWHERE", raising=False)
        use_connection(
            monkeypatch,
            smspartner_connection_json(sandbox.base_url, rate_limit_redis_conn_id="redis_nowhere"),
        )
        with pytest.raises(SmsPartnerConfigError, match="names 'redis_nowhere', which is not a defined"):
            SmsPartnerHook().get_account()
        assert sandbox.stats.total == 0

    def test_redis_connection_of_another_type(self, monkeypatch, sandbox):
        monkeypatch.setenv("AIRFLOW_CONN_NOT_REDIS", _redis_connection(conn_type="postgres"))
        use_connection(
            monkeypatch, smspartner_connection_json(sandbox.base_url, rate_limit_redis_conn_id="not_redis")
        )
        with pytest.raises(SmsPartnerConfigError, match="of type 'postgres'; it must be of type 'redis'"):
            SmsPartnerHook().get_account()

    def test_redis_provider_not_installed(self, monkeypatch, sandbox, budget):
        monkeypatch.setitem(sys.modules, "airflow.providers.redis.hooks.redis", None)
        use_connection(monkeypatch, _shared(sandbox, f"{budget}-no-provider"))
        with pytest.raises(
            SmsPartnerConfigError, match=r"pip install 'airflow-provider-smspartner\[redis\]'"
        ):
            SmsPartnerHook().get_account()


class TestQuietLogs:
    def test_without_the_shared_limit_the_task_says_once_that_parallel_tasks_multiply_the_rate(
        self, monkeypatch, sandbox, capfd
    ):
        conn_id = f"notice_{uuid.uuid4().hex[:8]}"
        use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url), conn_id)
        for _ in range(3):
            SmsPartnerHook(conn_id).get_account()
        lines = _log_lines(capfd, "parallel tasks and workers")
        assert len(lines) == 1
        assert conn_id in lines[0] and "rate_limit_redis_conn_id" in lines[0]

    def test_no_notice_with_the_shared_limit(self, monkeypatch, sandbox, budget, capfd):
        use_connection(monkeypatch, _shared(sandbox, budget), "shared_notice")
        SmsPartnerHook("shared_notice").get_account()
        assert _log_lines(capfd, "parallel tasks and workers") == []

    @pytest.mark.parametrize("shared", [False, True], ids=["per-process", "shared"])
    def test_retries_are_summarised_not_logged_one_by_one(self, monkeypatch, budget, capfd, shared):
        monkeypatch.setattr(RetrySummaryLog, "every", 0.4)
        with SandboxServer(
            api_key=TEST_API_KEY,
            retry_after="0",
            fault_rates={"rate_limit": 0.3, "server_error": 0.1},
            fault_endpoints=["stop-sms/add"],
            seed=3,
        ) as sandbox:
            extras = {"max_retries": 30, "requests_per_second": 400}
            conn = _shared(sandbox, budget, **extras) if shared else None
            use_connection(monkeypatch, conn or smspartner_connection_json(sandbox.base_url, **extras))
            hook = SmsPartnerHook()
            began = time.monotonic()
            _add_in_threads(hook, _numbers(400, "+336450"), threads=8)
            hook.close()
            elapsed = time.monotonic() - began
            faults = sandbox.stats.by_fault
        lines = [line for line in _log_lines(capfd, "SMS Partner 'smspartner_default'") if "retr" in line]
        retries = faults["rate_limit"] + faults["server_error"]
        assert retries >= 100
        # One line for the first retry, then at most one per 0.4 s, and the last at close().
        assert len(lines) <= 2 + elapsed / 0.4 + 1, lines
        assert "retry 1 of 30" in lines[0]
        summarised = sum(
            int(m.replace(",", "")) for m in re.findall(r"([\d,]+) retries \(", "\n".join(lines))
        )
        assert 1 + summarised == retries
        assert any("HTTP 429: " in line and "HTTP 5xx: " in line for line in lines)


class TestNoDeprecationWarnings:
    @pytest.mark.parametrize("shared", [False, True], ids=["per-process", "shared"])
    def test_a_retried_call_warns_nothing(self, monkeypatch, sandbox, budget, shared):
        # tenacity's wait_exponential_jitter(initial=...) warned on every retried task.
        extras = {"retry_backoff": 0.01, "max_retries": 5}
        conn = _shared(sandbox, budget, **extras) if shared else None
        use_connection(monkeypatch, conn or smspartner_connection_json(sandbox.base_url, **extras))
        sandbox.retry_after = "0"
        for fault in ("server_error", "rate_limit", "drop", "malformed"):
            sandbox.inject(fault, endpoint="me")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            hook = SmsPartnerHook()
            hook.get_account()
            hook.add_stop("+33655443322")
            hook.close()
        assert sandbox.stats.count("me") == 5


class TestTestButtonWithASilentRedis:
    """The UI's Test button blocked 58 s when the shared budget's Redis did not answer."""

    def test_one_attempt_bounded_by_the_connection_timeout(self, monkeypatch, sandbox):
        import socket
        import threading

        accepted: list[socket.socket] = []
        server = socket.create_server(("127.0.0.1", 0))
        server.settimeout(0.2)
        stop = threading.Event()

        def accept_and_say_nothing() -> None:  # a Redis that takes connections and never answers
            while not stop.is_set():
                try:
                    accepted.append(server.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
        thread.start()
        try:
            monkeypatch.setenv("AIRFLOW_CONN_REDIS_SILENT", _redis_connection(server.getsockname()[1]))
            use_connection(
                monkeypatch,
                smspartner_connection_json(
                    sandbox.base_url,
                    timeout=1,
                    max_retries=5,
                    retry_backoff=1,
                    rate_limit_redis_conn_id="redis_silent",
                ),
            )
            hook = SmsPartnerHook()
            ok, message = hook.test_connection()
            assert ok is False and "redis_silent" in message and "Timeout" in message
            # What bounds the wait: one attempt of the call (no retry: six attempts of 10 s made the
            # 58 s), Redis timeouts of the connection's 1 s, and no retry by redis-py itself. redis-py
            # 8 (the floor run's) still opens a new connection per command of the attempt (up to 5
            # here, so about 5 s); redis-py 6 (the lock's) opens one.
            assert 1 <= len(accepted) <= 5
            pool = hook._connect_redis()[0].connection_pool
            assert (
                pool.connection_kwargs["socket_timeout"]
                == pool.connection_kwargs["socket_connect_timeout"]
                == 1
            )
            assert sandbox.stats.total == 0
        finally:
            stop.set()
            thread.join()
            for conn in accepted:
                conn.close()
            server.close()
