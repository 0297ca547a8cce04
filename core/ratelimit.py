"""Token buckets per API key: in Redis when there is one (shared by every API process), in
this process otherwise (embedded mode). A bucket holds `burst` tokens and refills at `rate`
per second; a request takes one token or is refused with the seconds until the next one.

With Redis, a process takes up to `rate * LEASE_SECONDS` tokens at once (a lease) and spends
them locally for at most LEASE_SECONDS, so a fast client costs one Redis round trip per
lease instead of one per request; at the default rates a lease is one or two tokens."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

# Lease tokens unspent after this long are dropped, so a process never holds on to more than
# a tenth of a second of a key's rate.
LEASE_SECONDS = 0.1

# Redis' own clock (TIME) so that API hosts with skewed clocks share one bucket correctly.
# Takes up to ARGV[3] tokens; answers "<granted> <seconds to wait when none>".
LUA = """
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait, granted = 0, math.min(want, math.floor(tokens))
if granted >= 1 then tokens = tokens - granted else granted = 0; wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(granted) .. ' ' .. tostring(wait)
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
    def __init__(self, url: str, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        import redis.asyncio as aioredis

        self.rate, self.burst, self.clock = rate, burst, clock
        # At most a quarter of the burst, so that processes sharing a key all get a share.
        self.lease = max(1, min(int(rate * LEASE_SECONDS), burst // 4))
        self._leases: dict[str, tuple[float, int]] = {}  # key: (expires, tokens left)
        self.client = aioredis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.script = self.client.register_script(LUA)

    async def take(self, name: str) -> float:
        # Runs on the event loop only: nothing awaits between reading and writing a lease.
        expires, left = self._leases.get(name, (0.0, 0))
        if left > 0 and self.clock() < expires:
            self._leases[name] = (expires, left - 1)
            return 0.0
        try:
            answer = await self.script(
                keys=[f"mifo:rate:{name}"], args=[self.rate, self.burst, self.lease]
            )
        except Exception as exc:  # a Redis outage must not take the API down with it
            log.warning("rate limiter unavailable, request allowed: %s", exc)
            return 0.0
        granted, wait = answer.split()
        if int(granted) < 1:
            return float(wait)
        if len(self._leases) > 10_000:
            self._leases.clear()
        self._leases[name] = (self.clock() + LEASE_SECONDS, int(granted) - 1)
        return 0.0

    async def close(self) -> None:
        await self.client.aclose()


def retry_after(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
