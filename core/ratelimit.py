"""Token buckets per API key: in Redis when there is one (shared by every API process), in
this process otherwise (embedded mode). A bucket holds `burst` tokens and refills at `rate`
per second; a request takes one token or is refused with the seconds until the next one."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

# Redis' own clock (TIME) so that API hosts with skewed clocks share one bucket correctly.
LUA = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class LocalBuckets:
    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    async def take(self, name: str) -> float:
        """0 when allowed, else the seconds to wait."""
        with self._lock:
            now = self.clock()
            tokens, ts = self._buckets.get(name, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - ts) * self.rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.rate
            self._buckets[name] = (tokens, now)
            return wait


class RedisBuckets:
    def __init__(self, url: str, rate: float, burst: int) -> None:
        import redis.asyncio as aioredis

        self.rate, self.burst = rate, burst
        self.client = aioredis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.script = self.client.register_script(LUA)

    async def take(self, name: str) -> float:
        try:
            wait = await self.script(keys=[f"mifo:rate:{name}"], args=[self.rate, self.burst])
        except Exception as exc:  # a Redis outage must not take the API down with it
            log.warning("rate limiter unavailable, request allowed: %s", exc)
            return 0.0
        return float(wait)

    async def close(self) -> None:
        await self.client.aclose()


def retry_after(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
