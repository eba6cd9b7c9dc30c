"""A request budget shared through Redis by every process and machine that uses one key.

Why not a rate-limit library: ``limits`` and ``pyrate-limiter`` (and ``throttled-py``) answer
"may I send now?"; a caller that is refused sleeps and asks again. Under a fleet of waiting
callers that is a thundering herd at every free slot, a claim that comes late pushes the whole
schedule back (the rate falls short at high rates), and none of them holds every caller back for
a server's ``Retry-After``, including callers already waiting. Here each caller *reserves* the
next free slot in one atomic script (the generic cell rate algorithm with a burst of one, as
:class:`~airflow_provider_smspartner.utils.throttle.RequestThrottle` does in a process), sleeps
until it, then passes a second script that re-checks the shared pause and a sliding one-second
window (a caller that woke up late cannot bunch up with the next ones). Two short scripts, one
round trip each; all times come from the Redis server's clock, so machines need no clock sync.

Redis keys (one hash tag, so the scripts also run on Redis Cluster): ``{KEY}:schedule`` (next
free slot, microseconds), ``{KEY}:pause`` (end of the shared pause) and ``{KEY}:window``
(releases of the last second); each expires by itself shortly after the budget goes idle.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from airflow_provider_smspartner.exceptions import SmsPartnerConnectionError
from airflow_provider_smspartner.utils.redaction import redact
from airflow_provider_smspartner.utils.throttle import HEADROOM, window_allowance

if TYPE_CHECKING:
    from redis import Redis

#: Longest shared pause accepted, in seconds (a Retry-After is capped by the hook well below).
MAX_PAUSE = 3600.0

# Reserve the next free slot (ARGV[4] = "1"), or re-check after sleeping until it ("0"): a pause
# that began meanwhile voids the slot and reserves one after the pause; otherwise the sliding
# window of the last second decides. Returns 0 (go now) or the microseconds to sleep before
# calling again in re-check mode.
# KEYS: schedule, pause, window. ARGV: interval_us, per_window, member, reserve.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[4] == '1' or pause > now then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  local slot = math.max(now, tat, pause)
  local ttl = math.floor((slot + interval - now) / 1000) + 2000
  redis.call('SET', KEYS[1], string.format('%.0f', slot + interval), 'PX', ttl)
  if slot > now then
    return slot - now
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 1000000)
if redis.call('ZCARD', KEYS[3]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[3], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[3], 2000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + 1000000 - now)
"""

# Hold every caller back until now + ARGV[1] microseconds; a shorter pause never shortens a
# longer one. Returns the microseconds left in the pause. KEYS: pause.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_ = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > current then
  redis.call('SET', KEYS[1], string.format('%.0f', until_), 'PX', math.floor(tonumber(ARGV[1]) / 1000) + 1000)
  return until_ - now
end
return math.max(0, current - now)
"""

# Microseconds left in the pause (0 when not paused). KEYS: pause.
_PAUSED_FOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return math.max(0, tonumber(redis.call('GET', KEYS[1]) or '0') - now)
"""


def redis_keys(key: str) -> tuple[str, str, str]:
    """The Redis keys of the budget ``key``: schedule, pause and window (one hash tag)."""
    return f"{{{key}}}:schedule", f"{{{key}}}:pause", f"{{{key}}}:window"


class SharedRateLimit:
    """Keeps the requests of every process using ``key`` under ``rate`` per second, through Redis.

    The same contract as :class:`~airflow_provider_smspartner.utils.throttle.RequestThrottle`,
    fleet-wide: requests are spaced ``1 / rate`` apart (2% under ``rate``, see ``HEADROOM``), no
    more than ``rate`` leave in any sliding second, and :meth:`pause` holds every caller of every
    process, also those already waiting for their slot.

    Every Redis failure raises :class:`SmsPartnerConnectionError` naming ``where``: a request is
    never sent outside the shared budget.

    :param client: A ``redis.Redis`` (or ``RedisCluster``) client.
    :param key: The budget's name; the Redis keys are ``{key}:schedule``, ``{key}:pause``,
        ``{key}:window``.
    :param rate: Requests per second (> 0) for the whole fleet.
    :param where: How error messages name the Redis server, e.g. ``Redis connection 'redis_default'``.
    """

    def __init__(self, client: Redis, key: str, rate: float, where: str = "Redis") -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.client = client
        self.key = key
        self.rate = rate
        self.where = where
        self._keys = list(redis_keys(key))
        self._interval_us = max(1, round(1_000_000 / (rate * HEADROOM)))
        self._per_window = window_allowance(rate)
        self._acquire = client.register_script(_ACQUIRE)
        self._pause = client.register_script(_PAUSE)
        self._paused_for = client.register_script(_PAUSED_FOR)
        # Window members must be unique across the fleet: process instance + counter.
        self._member_prefix = f"{uuid.uuid4().hex[:12]}:{os.getpid()}:"
        self._counter = itertools.count()

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> int:
        try:
            return int(script(keys=keys, args=args))
        except RedisError as exc:
            raise SmsPartnerConnectionError(
                redact(
                    f"Shared rate limit {self.key!r}: {self.where} failed ({type(exc).__name__}: {exc}); "
                    "no request is sent without it, since the budget is shared through it"
                )
            ) from None

    def check(self) -> None:
        """Ping the server: raise :class:`SmsPartnerConnectionError` now rather than at the first request."""
        self.paused_for()

    def acquire(self) -> float:
        """Block until this caller may send a request; return the seconds waited."""
        started = time.monotonic()
        member = f"{self._member_prefix}{next(self._counter)}"
        wait = self._call(self._acquire, self._keys, [self._interval_us, self._per_window, member, "1"])
        while wait > 0:
            time.sleep(wait / 1_000_000)
            wait = self._call(self._acquire, self._keys, [self._interval_us, self._per_window, member, "0"])
        return time.monotonic() - started

    def pause(self, seconds: float) -> None:
        """Hold every caller of every process back for ``seconds`` (a 429 with ``Retry-After``).

        Callers already waiting wait too; a shorter pause never shortens a longer one.
        """
        micros = round(min(max(seconds, 0.0), MAX_PAUSE) * 1_000_000)
        if micros > 0:
            self._call(self._pause, self._keys[1:2], [micros])

    def paused_for(self) -> float:
        """Seconds left in the shared pause (0 when not paused)."""
        return self._call(self._paused_for, self._keys[1:2], []) / 1_000_000

    def __repr__(self) -> str:
        return f"SharedRateLimit(key={self.key!r}, rate={self.rate:g}, where={self.where!r})"


_registry: dict[tuple[str, str, float], SharedRateLimit] = {}
_registry_lock = threading.Lock()


def shared_rate_limit(
    redis_conn_id: str, key: str, rate: float, connect: Callable[[], tuple[Redis, str]]
) -> SharedRateLimit:
    """Return the process's :class:`SharedRateLimit` for ``key`` through ``redis_conn_id``.

    ``connect`` is called once per process (per Redis connection, key and rate) and returns the
    client and how messages name it; the server is pinged before the limiter is handed out.
    """
    with _registry_lock:
        limiter = _registry.get((redis_conn_id, key, rate))
        if limiter is None:
            client, where = connect()
            limiter = SharedRateLimit(client, key, rate, where)
            limiter.check()
            _registry[(redis_conn_id, key, rate)] = limiter
        return limiter
