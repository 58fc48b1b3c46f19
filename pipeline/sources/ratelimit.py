"""A request rate per integration, honoured by every worker: GCRA on the broker's Redis.

The generic cell rate algorithm keeps one number per integration, the theoretical arrival time
(TAT) of the next request. Each caller reserves the next slot in one atomic script, timed by
Redis' own clock (no two hosts need agree on the time), and sleeps until its slot: callers queue
in arrival order and the long-run rate is ``rate`` requests a second, with at most ``burst`` at
once after an idle spell. Losing the key (a Redis restart) only forgets the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from pipeline.errors import TransientError
from pipeline.settings import Settings

# KEYS[1] the integration's TAT (microseconds, Redis clock); ARGV interval and tolerance (us).
# Returns how long the caller waits for its slot, in microseconds.
_RESERVE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
local ttl = math.ceil((tat + interval - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX', ttl)
return wait
"""


class RateLimiter(Protocol):
    def acquire(self, sleep: Callable[[float], None] | None = None) -> float: ...


class RedisRateLimiter:
    """``acquire()`` blocks until this caller may send; the seconds it waited."""

    def __init__(
        self,
        client: Callable[[], Any],
        key: str,
        rate: float,
        burst: int = 1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client, self._script = client, None
        self.key = key
        self.interval_us = max(1, round(1_000_000 / rate))
        self.tolerance_us = (burst - 1) * self.interval_us
        self._sleep = sleep

    def acquire(self, sleep: Callable[[float], None] | None = None) -> float:
        """``sleep``: how to wait for the slot (a fetch passes its lease heartbeat)."""
        try:
            if self._script is None:
                self._script = self._client().register_script(_RESERVE)
            wait_us = int(self._script(keys=[self.key], args=[self.interval_us, self.tolerance_us]))
        except Exception as exc:  # redis' errors are not ours to let through (PITFALLS 17)
            raise TransientError(f"rate limiter unavailable: {type(exc).__name__}") from None
        wait = wait_us / 1_000_000
        if wait > 0:
            (sleep or self._sleep)(wait)
        return wait


def redis_url(settings: Settings) -> str:
    """The broker's Redis: ``IHUB_BROKER_URL``, or the embedded one's socket under IHUB_HOME."""
    return settings.broker_url or f"redis+socket://{settings.home / 'redis.sock'}"


def redis_client(url: str) -> Any:
    import redis

    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"), socket_timeout=5)
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def limiter_for(
    settings: Settings, name: str, rate: float | None, burst: int
) -> RateLimiter | None:
    """The integration's limiter, or None when it has no rate limit. Connects on first use."""
    if rate is None:
        return None
    url = redis_url(settings)
    clients: list[Any] = []

    def client() -> Any:
        if not clients:
            clients.append(redis_client(url))
        return clients[0]

    return RedisRateLimiter(client, f"ihub:ratelimit:{name}", rate, burst)
