"""A request budget shared through Redis by every process and machine that uses one key.

Why not a rate-limit library: ``limits`` and ``pyrate-limiter`` (and ``throttled-py``) answer
"may I send now?"; a caller that is refused sleeps and asks again. Under a fleet of waiting
callers that is a thundering herd at every free slot, a claim that comes late pushes the whole
schedule back (the rate falls short at high rates), and none of them holds every caller back for
a server's ``Retry-After``, including callers already waiting. Here each caller *reserves* the
next free slot in one atomic script (the generic cell rate algorithm with a burst of one, as
:class:`~airflow_provider_smspartner.api.throttle.RequestThrottle` does in a process), sleeps
until it, then passes a second script that re-checks the shared pause and a sliding one-second
window (a caller that woke up late cannot bunch up with the next ones). Two short scripts, one
round trip each; all times come from the Redis server's clock, so machines need no clock sync.

One budget has one rate: callers at different rates would starve the slower ones (the faster
keep the shared window fuller than a slower caller allows itself). So the budget's rate lives in
Redis, with the connection that set it, and a caller at another rate is refused (a
:class:`SmsPartnerConfigError` naming both connections) before it sends anything; the
connection that set the rate may change it at once, every other must wait until it expires
(:data:`RATE_TTL` after the budget's last request) or use another key.

Redis keys (one hash tag, so the scripts also run on Redis Cluster): ``{KEY}:schedule`` (next
free slot, microseconds), ``{KEY}:pause`` (end of the shared pause) and ``{KEY}:window``
(releases of the last second), each expiring by itself shortly after the budget goes idle; and
``{KEY}:rate`` (a hash: ``rate``, ``conn``), which lives :data:`RATE_TTL` after the last request.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from airflow_provider_smspartner.api.throttle import HEADROOM, PauseTooLong, window_allowance
from airflow_provider_smspartner.exceptions import SmsPartnerConfigError, SmsPartnerConnectionError
from airflow_provider_smspartner.utils.redaction import redact

if TYPE_CHECKING:
    from redis import Redis

#: Longest shared pause stored, in seconds: a day (a ``Retry-After`` longer than the connection's
#: ``max_retry_after`` is stored too, so every caller of the fleet stops at once rather than knock).
MAX_PAUSE = 86400.0
#: Seconds the budget's rate lives in Redis after the budget's last request (longer during a
#: pause): until then a connection at another rate is refused, unless it set the rate itself.
RATE_TTL = 600.0

# Answers of the acquire script besides 0 (go, or sleep and ask again): a pause longer than the
# caller accepts, a rate conflict.
_PAUSED_TOO_LONG, _RATE_CONFLICT = 1, 2

# Reserve the next free slot (ARGV[4] = "1"), or re-check after sleeping until it ("0"): a pause
# that began meanwhile voids the slot and reserves one after the pause; otherwise the sliding
# window of the last second decides. A pause longer than ARGV[5] microseconds (-1: no limit)
# reserves nothing. When reserving, the budget's rate (KEYS[4]) is checked: set to ARGV[6] by
# connection ARGV[7] when absent, its time to live renewed when equal, reported when different.
# Returns {0, microseconds to sleep before calling again in re-check mode (0 = go now)},
# {1, microseconds left in the pause} or {2, live rate, connection that set it, its ttl in ms}.
# KEYS: schedule, pause, window, rate.
# ARGV: interval_us, per_window, member, reserve, max_pause_us, rate, conn_id, rate_ttl_ms.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
local limit = tonumber(ARGV[5])
if limit >= 0 and pause - now > limit then
  return {1, pause - now}
end
if ARGV[4] == '1' then
  local live = redis.call('HMGET', KEYS[4], 'rate', 'conn')
  if live[1] and live[1] ~= ARGV[6] then
    return {2, live[1], live[2] or '', redis.call('PTTL', KEYS[4])}
  end
  if not live[1] then
    redis.call('HSET', KEYS[4], 'rate', ARGV[6], 'conn', ARGV[7])
  end
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[8]) + math.max(0, math.floor((pause - now) / 1000)))
end
if ARGV[4] == '1' or pause > now then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  local slot = math.max(now, tat, pause)
  local ttl = math.floor((slot + interval - now) / 1000) + 2000
  redis.call('SET', KEYS[1], string.format('%.0f', slot + interval), 'PX', ttl)
  if slot > now then
    return {0, slot - now}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 1000000)
if redis.call('ZCARD', KEYS[3]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[3], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[3], 2000)
  return {0, 0}
end
local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return {0, math.max(1, tonumber(oldest[2]) + 1000000 - now)}
"""

# Give the budget this caller's rate: set it when absent, or when this connection set it (it may
# change its own rate at once); renew it when equal (who set it stays). Returns {} when the rate
# is this caller's, else {live rate, connection that set it, its ttl in ms}.
# KEYS: rate. ARGV: rate, conn_id, rate_ttl_ms.
_CLAIM = """
local live = redis.call('HMGET', KEYS[1], 'rate', 'conn')
if live[1] and live[1] ~= ARGV[1] and live[2] ~= ARGV[2] then
  return {live[1], live[2] or '', redis.call('PTTL', KEYS[1])}
end
if live[1] ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'rate', ARGV[1], 'conn', ARGV[2])
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return {}
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


def redis_keys(key: str) -> tuple[str, str, str, str]:
    """The Redis keys of the budget ``key``: schedule, pause, window and rate (one hash tag)."""
    return f"{{{key}}}:schedule", f"{{{key}}}:pause", f"{{{key}}}:window", f"{{{key}}}:rate"


class SharedRateLimit:
    """Keeps the requests of every process using ``key`` under ``rate`` per second, through Redis.

    The same contract as :class:`~airflow_provider_smspartner.api.throttle.RequestThrottle`,
    fleet-wide: requests are spaced ``1 / rate`` apart (2% under ``rate``, see ``HEADROOM``), no
    more than ``rate`` leave in any sliding second, and :meth:`pause` holds every caller of every
    process, also those already waiting for their slot.

    One rate per budget: :meth:`claim` (and every request) checks the rate stored in Redis and
    raises :class:`SmsPartnerConfigError` when it differs (see the module docstring).

    Every Redis failure raises :class:`SmsPartnerConnectionError` naming ``where``: a request is
    never sent outside the shared budget.

    :param client: A ``redis.Redis`` (or ``RedisCluster``) client.
    :param key: The budget's name; the Redis keys are ``{key}:schedule``, ``{key}:pause``,
        ``{key}:window``, ``{key}:rate``.
    :param rate: Requests per second (> 0) for the whole fleet.
    :param where: How error messages name the Redis server, e.g. ``Redis connection 'redis_default'``.
    :param conn_id: The ``smspartner`` connection this limiter serves: stored with the rate it
        sets, named in rate conflicts.
    """

    def __init__(
        self, client: Redis, key: str, rate: float, where: str = "Redis", *, conn_id: str = "(unnamed)"
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.client = client
        self.key = key
        self.rate = rate
        self.where = where
        self.conn_id = conn_id
        self._keys = list(redis_keys(key))
        # The stored form of the rate: two callers agree when these texts are equal.
        self._rate_text = repr(float(rate))
        self._interval_us = max(1, round(1_000_000 / (rate * HEADROOM)))
        self._per_window = window_allowance(rate)
        self._acquire = client.register_script(_ACQUIRE)
        self._claim = client.register_script(_CLAIM)
        self._pause = client.register_script(_PAUSE)
        self._paused_for = client.register_script(_PAUSED_FOR)
        # Window members must be unique across the fleet: process instance + counter.
        self._member_prefix = f"{uuid.uuid4().hex[:12]}:{os.getpid()}:"
        self._counter = itertools.count()

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except RedisError as exc:
            raise SmsPartnerConnectionError(
                redact(
                    f"Shared rate limit {self.key!r}: {self.where} failed ({type(exc).__name__}: {exc}); "
                    "no request is sent without it, since the budget is shared through it"
                )
            ) from None

    def _conflict(self, live: list[Any]) -> SmsPartnerConfigError:
        """The refusal of this caller's rate, from the script's ``{live rate, set by, ttl ms}``."""
        rate_text, owner = (_text(value) for value in live[:2])
        try:
            shown = f"{float(rate_text):g}"
        except ValueError:
            shown = repr(rate_text)
        expires = max(0, math.ceil(int(live[2]) / 1000))
        return SmsPartnerConfigError(
            f"Shared rate limit: connection {self.conn_id!r} has requests_per_second={self.rate:g}, but the "
            f"budget of its rate_limit_key {self.key!r} runs at requests_per_second={shown}, set by "
            f"connection {owner!r} (that rate expires in {expires} s unless the budget is used meanwhile). "
            "Connections sharing a budget must share its rate, or the slower ones starve. Give "
            f"{self.conn_id!r} requests_per_second={shown}, or another rate_limit_key, or wait until the "
            f"budget's rate expires ({RATE_TTL:g} s after its last request); {owner!r} may change it at once."
        )

    def check(self) -> None:
        """Ping the server: raise :class:`SmsPartnerConnectionError` now rather than at the first request."""
        self.paused_for()

    def claim(self) -> None:
        """Give the budget this caller's rate, or make sure it has it (this also pings the server).

        The rate is set when the budget has none, or when this caller's connection set the current
        one (a connection may change its own rate at once); it lives :data:`RATE_TTL` seconds
        after the budget's last request.

        :raises SmsPartnerConfigError: another connection set another rate, which is still live.
        """
        live = self._call(self._claim, self._keys[3:4], [self._rate_text, self.conn_id, _rate_ttl_ms()])
        if live:
            raise self._conflict(live)

    def acquire(self, max_pause: float | None = None) -> float:
        """Block until this caller may send a request; return the seconds waited.

        :param max_pause: Longest shared pause to wait out, in seconds (``None``: any).
        :raises PauseTooLong: a longer pause is in force (nothing is reserved).
        :raises SmsPartnerConfigError: the budget runs at another rate (see :meth:`claim`).
        """
        started = time.monotonic()
        member = f"{self._member_prefix}{next(self._counter)}"
        limit = -1 if max_pause is None else round(max(max_pause, 0.0) * 1_000_000)
        args = [self._interval_us, self._per_window, member, "1", limit, self._rate_text, self.conn_id]
        answer = self._call(self._acquire, self._keys, [*args, _rate_ttl_ms()])
        while True:
            kind = int(answer[0])
            if kind == _RATE_CONFLICT:
                raise self._conflict(answer[1:])
            if kind == _PAUSED_TOO_LONG:
                raise PauseTooLong(int(answer[1]) / 1_000_000)
            wait = int(answer[1])
            if wait <= 0:
                return time.monotonic() - started
            time.sleep(wait / 1_000_000)
            args[3] = "0"
            answer = self._call(self._acquire, self._keys, [*args, _rate_ttl_ms()])

    def pause(self, seconds: float) -> None:
        """Hold every caller of every process back for ``seconds`` (a 429 with ``Retry-After``).

        Callers already waiting wait too; a shorter pause never shortens a longer one; a pause is
        stored for :data:`MAX_PAUSE` seconds at most.
        """
        micros = round(min(max(seconds, 0.0), MAX_PAUSE) * 1_000_000)
        if micros > 0:
            self._call(self._pause, self._keys[1:2], [micros])

    def paused_for(self) -> float:
        """Seconds left in the shared pause (0 when not paused)."""
        return int(self._call(self._paused_for, self._keys[1:2], [])) / 1_000_000

    def __repr__(self) -> str:
        return (
            f"SharedRateLimit(key={self.key!r}, rate={self.rate:g}, where={self.where!r}, "
            f"conn_id={self.conn_id!r})"
        )


def _rate_ttl_ms() -> int:
    return max(1, round(RATE_TTL * 1000))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


_registry: dict[tuple[str, str, float, str], SharedRateLimit] = {}
_registry_lock = threading.Lock()


def shared_rate_limit(
    redis_conn_id: str, key: str, rate: float, connect: Callable[[], tuple[Redis, str]], conn_id: str
) -> SharedRateLimit:
    """Return the process's :class:`SharedRateLimit` for ``key`` through ``redis_conn_id``.

    ``connect`` is called once per process (per Redis connection, key, rate and ``smspartner``
    connection ``conn_id``) and returns the client and how messages name it; the limiter claims
    the budget's rate (:meth:`SharedRateLimit.claim`, which also pings the server) before it is
    handed out, so a connection at another rate is refused before its first request.

    :raises SmsPartnerConfigError: the budget runs at another rate, set by another connection.
    :raises SmsPartnerConnectionError: Redis does not answer.
    """
    with _registry_lock:
        limiter = _registry.get((redis_conn_id, key, rate, conn_id))
        if limiter is None:
            client, where = connect()
            limiter = SharedRateLimit(client, key, rate, where, conn_id=conn_id)
            limiter.claim()
            _registry[(redis_conn_id, key, rate, conn_id)] = limiter
        return limiter
