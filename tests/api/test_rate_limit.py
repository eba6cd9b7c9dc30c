"""SharedRateLimit over the real Redis of the build machines: one budget for several processes.

Each test uses its own budget name in its own database (``REDIS_DB``) and deletes its keys.
Timings are observed, not asserted, except the budget itself (never more than the rate in any
second) and the pause (nobody released before it ends).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from airflow_provider_smspartner.api import rate_limit
from airflow_provider_smspartner.api.rate_limit import RATE_TTL, SharedRateLimit, redis_keys
from airflow_provider_smspartner.api.throttle import HEADROOM, PauseTooLong
from airflow_provider_smspartner.exceptions import SmsPartnerConfigError, SmsPartnerConnectionError
from tests.conftest import PROJECT_ROOT
from tests.helpers import free_port

#: The Redis database of these tests (Celery's broker uses 0).
REDIS_DB = 11


@pytest.fixture
def redis_client(redis_server):
    import redis

    host, port = redis_server
    client = redis.Redis(host=host, port=port, db=REDIS_DB)
    yield client
    client.close()


@pytest.fixture
def budget(redis_client) -> Iterator[str]:
    """A budget name no other test uses; its keys are deleted afterwards."""
    key = f"test-smspartner-{uuid.uuid4().hex[:12]}"
    yield key
    redis_client.delete(*redis_keys(key))


# A process of the fleet: says "ready" once its limiter claimed the rate, waits for a line on stdin, then
# takes `count` slots from `threads` threads and prints when each was released (wall clock,
# comparable across processes on one machine).
_CHILD = r"""
import json, sys, threading, time
import redis
from airflow_provider_smspartner.api.rate_limit import SharedRateLimit
args = json.loads(sys.argv[1])
limiter = SharedRateLimit(redis.Redis(port=6379, db=args["db"]), args["key"], args["rate"])
limiter.claim()
print("ready", flush=True)
sys.stdin.readline()
released, waited, lock = [], [], threading.Lock()
def work(count):
    for _ in range(count):
        wait = limiter.acquire()
        with lock:
            released.append(time.time())
            waited.append(wait)
threads = [threading.Thread(target=work, args=(args["count"] // args["threads"],)) for _ in range(args["threads"])]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"released": released, "waited": waited}), flush=True)
"""


class Fleet:
    """Processes sharing one budget, started together once all of them are ready."""

    def __init__(self, processes: int, **args: object) -> None:
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        self.children = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, json.dumps({"db": REDIS_DB, **args})],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=PROJECT_ROOT,
            )
            for _ in range(processes)
        ]

    def ready(self) -> None:
        for child in self.children:
            assert child.stdout is not None
            # Airflow may log to stdout first (its configuration being loaded).
            for line in child.stdout:
                if line.strip() == "ready":
                    break
            else:
                pytest.fail(f"a fleet process exited before it was ready: {child.wait()}")

    def go(self) -> None:
        for child in self.children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()

    def results(self) -> list[dict]:
        out = []
        for child in self.children:
            stdout, _ = child.communicate(timeout=120)
            assert child.returncode == 0
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out

    def kill(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()


@pytest.mark.slow  # a child interpreter
class TestOneBudgetForSeveralProcesses:
    def test_processes_never_exceed_the_rate_together(self, redis_client, budget):
        fleet = Fleet(4, key=budget, rate=50, count=45, threads=3)
        # The releases of the last second, counted by Redis's clock (what the limiter promises,
        # free of the scheduling jitter a process adds before it reads its own clock).
        count_window = redis_client.register_script(
            "local t = redis.call('TIME') "
            "return redis.call('ZCOUNT', KEYS[1], '(' .. (t[1] * 1000000 + t[2] - 1000000), '+inf')"
        )
        window_key = redis_keys(budget)[2]
        in_window: list[int] = []
        try:
            fleet.ready()
            fleet.go()
            while any(child.poll() is None for child in fleet.children) and len(in_window) < 100_000:
                in_window.append(int(count_window(keys=[window_key])))
                time.sleep(0.002)
            released = [t for result in fleet.results() for t in result["released"]]
        finally:
            fleet.kill()
        assert len(released) == 180
        assert 45 <= max(in_window) <= 49  # ceil(50 x 0.98): never passed
        # Four processes at 50/s each would take under a second; sharing, about 180 / 49 s.
        assert (len(released) - 1) / (max(released) - min(released)) == pytest.approx(50 * HEADROOM, rel=0.03)

    def test_a_pause_holds_another_process(self, redis_client, budget):
        fleet = Fleet(1, key=budget, rate=100, count=1, threads=1)
        try:
            fleet.ready()
            SharedRateLimit(redis_client, budget, 100).pause(1.0)
            paused_at = time.time()
            fleet.go()
            (result,) = fleet.results()
        finally:
            fleet.kill()
        assert result["released"][0] >= paused_at + 0.9
        assert result["waited"][0] >= 0.9


class TestSharedRateLimit:
    def test_callers_already_waiting_see_a_pause_that_begins_later(self, redis_client, budget):
        import redis

        # 2/s: the second caller reserves a slot ~0.5 s out; the pause begins while it sleeps,
        # set through another client, as another process would.
        limiter = SharedRateLimit(redis_client, budget, 2)
        other = SharedRateLimit(redis.Redis(port=6379, db=REDIS_DB), budget, 2)
        limiter.acquire()
        released: list[float] = []

        def wait_for_a_slot() -> None:
            limiter.acquire()
            released.append(time.monotonic())

        waiter = threading.Thread(target=wait_for_a_slot)
        waiter.start()
        time.sleep(0.1)
        paused_at = time.monotonic()
        other.pause(1.0)
        waiter.join(10)
        assert released and released[0] >= paused_at + 0.95
        other.client.close()

    def test_a_shorter_pause_never_shortens_a_longer_one(self, redis_client, budget):
        limiter = SharedRateLimit(redis_client, budget, 10)
        limiter.pause(2.0)
        limiter.pause(0.1)
        assert 1.5 < limiter.paused_for() <= 2.0

    def test_the_pause_does_not_end_in_a_burst(self, redis_client, budget):
        limiter = SharedRateLimit(redis_client, budget, 10)
        limiter.pause(0.3)
        released: list[float] = []
        lock = threading.Lock()

        def work() -> None:
            limiter.acquire()
            with lock:
                released.append(time.monotonic())

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        gaps = [b - a for a, b in zip(sorted(released), sorted(released)[1:], strict=False)]
        assert min(gaps) >= 0.09  # spaced 1 / (10 x 0.98) apart, not released together

    def test_keys_expire_when_the_budget_is_idle(self, redis_client, budget):
        limiter = SharedRateLimit(redis_client, budget, 10)
        limiter.acquire()
        limiter.pause(0.5)
        *schedule_pause_window, rate = (redis_client.pttl(key) for key in redis_keys(budget))
        assert all(0 < ttl <= 3000 for ttl in schedule_pause_window), schedule_pause_window
        # The rate outlives the budget's activity (see TestOneRatePerBudget), not forever.
        assert 0 < rate <= RATE_TTL * 1000

    def test_keys_share_one_hash_tag(self, budget):
        # So the scripts, which touch all four, also run on Redis Cluster.
        assert {key.split("}")[0] for key in redis_keys(budget)} == {"{" + budget}

    def test_a_pause_longer_than_the_caller_accepts_is_refused_not_waited(self, redis_client, budget):
        limiter = SharedRateLimit(redis_client, budget, 10)
        limiter.pause(7200)
        started = time.monotonic()
        with pytest.raises(PauseTooLong) as refused:
            limiter.acquire(max_pause=300)
        assert time.monotonic() - started < 5  # no wait: one round trip (generous on a loaded box)
        assert 7190 < refused.value.seconds <= 7200
        assert redis_client.get(redis_keys(budget)[0]) is None  # no slot was reserved
        limiter.pause(0)  # a shorter pause never shortens it
        assert 7190 < limiter.paused_for() <= 7200

    def test_a_pause_the_caller_accepts_is_waited_out(self, redis_client, budget):
        limiter = SharedRateLimit(redis_client, budget, 10)
        limiter.pause(0.3)
        assert limiter.acquire(max_pause=300) >= 0.25


class TestOneRatePerBudget:
    """Issue 19: one budget, one rate, stored in Redis with the connection that set it."""

    def _limiter(self, client, budget: str, rate: float, conn_id: str) -> SharedRateLimit:
        return SharedRateLimit(client, budget, rate, conn_id=conn_id)

    def test_the_rate_is_stored_with_who_set_it_and_a_time_to_live(self, redis_client, budget):
        self._limiter(redis_client, budget, 20, "sms_a").claim()
        rate_key = redis_keys(budget)[3]
        assert redis_client.hgetall(rate_key) == {b"rate": b"20.0", b"conn": b"sms_a"}
        assert RATE_TTL * 1000 - 5000 < redis_client.pttl(rate_key) <= RATE_TTL * 1000
        # The same rate joins; who set it stays.
        self._limiter(redis_client, budget, 20.0, "sms_b").claim()
        assert redis_client.hget(rate_key, "conn") == b"sms_a"

    def test_another_rate_is_refused_naming_both_connections_and_the_fix(self, redis_client, budget):
        self._limiter(redis_client, budget, 20, "sms_a").claim()
        with pytest.raises(SmsPartnerConfigError) as refused:
            self._limiter(redis_client, budget, 5, "sms_b").claim()
        message = str(refused.value)
        assert message.startswith(
            f"Shared rate limit: connection 'sms_b' has requests_per_second=5, but the budget of its "
            f"rate_limit_key {budget!r} runs at requests_per_second=20, set by connection 'sms_a' "
            "(that rate expires in "
        )
        assert "give 'sms_b' requests_per_second=20, or another rate_limit_key, or wait" in message.replace(
            "Give", "give"
        )
        assert "'sms_a' may change it at once" in message
        assert redis_client.hget(redis_keys(budget)[3], "rate") == b"20.0"

    def test_the_connection_that_set_the_rate_may_change_it(self, redis_client, budget):
        old = self._limiter(redis_client, budget, 20, "sms_a")
        old.claim()
        old.acquire()
        self._limiter(redis_client, budget, 10, "sms_a").claim()
        assert redis_client.hget(redis_keys(budget)[3], "rate") == b"10.0"
        # A limiter at the old rate (a task that began before the change) is refused at its next
        # request, with nothing reserved.
        with pytest.raises(SmsPartnerConfigError, match=r"'sms_a' has requests_per_second=20.*=10"):
            old.acquire()

    def test_a_request_renews_the_rate_and_sets_it_when_it_expired(self, redis_client, budget, monkeypatch):
        monkeypatch.setattr(rate_limit, "RATE_TTL", 1.0)
        limiter = self._limiter(redis_client, budget, 20, "sms_a")
        limiter.claim()
        rate_key = redis_keys(budget)[3]
        redis_client.pexpire(rate_key, 50)
        limiter.acquire()
        assert 900 < redis_client.pttl(rate_key) <= 1000  # renewed
        redis_client.delete(rate_key)  # as if it expired while the budget was idle
        self._limiter(redis_client, budget, 5, "sms_b").claim()
        with pytest.raises(SmsPartnerConfigError, match="set by connection 'sms_b'"):
            limiter.acquire()

    @pytest.mark.slow  # a child interpreter
    def test_processes_are_refused_too(self, redis_client, budget):
        self._limiter(redis_client, budget, 50, "sms_a").claim()
        fleet = Fleet(1, key=budget, rate=10, count=1, threads=1)
        try:
            stdout, _ = fleet.children[0].communicate(timeout=120)
        finally:
            fleet.kill()
        assert fleet.children[0].returncode != 0
        assert "ready" not in stdout

    def test_unreachable_redis_fails_clearly(self):
        import redis

        port = free_port()
        client = redis.Redis(port=port, socket_connect_timeout=2)
        limiter = SharedRateLimit(client, "k", 10, where=f"Redis at 127.0.0.1:{port}")
        message = (
            rf"Shared rate limit 'k': Redis at 127.0.0.1:{port} failed \(ConnectionError.*no request is sent"
        )
        with pytest.raises(SmsPartnerConnectionError, match=message):
            limiter.acquire()
        with pytest.raises(SmsPartnerConnectionError, match=message):
            limiter.pause(1)
