"""Per-key request limits: a moving window (the `limits` library) in Redis when there is one,
shared by every API process, in this process otherwise (embedded mode).

A key may send `burst` requests in any window of `burst / rate` seconds, rounded up to whole
seconds: at the defaults, 40 requests in any 2 s, so bursts of 40 and 20/s sustained. The
window is checked and the request recorded in one Redis script, so concurrent requests never
admit more, or fewer, than `burst`.

One Redis call per request cost the status poll about 0.12 ms of the event loop (a third of
its time under `bench/load.py --compare`), so a key that sent several requests in the last
LEASE_SECONDS takes as many entries at once (a lease, at most `rate * LEASE_SECONDS`) and spends them in
this process within LEASE_SECONDS. A key near its limit takes one entry at a time, so
bursts stay exact; a refused key is refused here, without Redis, until its oldest entry
leaves the window (nothing can free one sooner).

Fail-open: while Redis cannot be reached, requests are admitted. The outage logs one warning
and its end one info line; in between Redis is tried again once per RETRY_SECONDS only, so
admitted requests do not wait on a dead server."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

log = logging.getLogger(__name__)

# While Redis is down, one request per this many seconds tries it again.
RETRY_SECONDS = 1.0
# A request waits at most this long on Redis before it is admitted without it.
REDIS_TIMEOUT_SECONDS = 0.5
# Leased entries unspent after this long are dropped: an entry is recorded when it is leased,
# so a request spent from a lease is at most this much older in the window than it is.
LEASE_SECONDS = 0.1
# Keys whose state (lease, refusal) is kept before the stale ones are dropped.
MAX_KEYS = 10_000


def window_seconds(rate: float, burst: int) -> int:
    """The moving window holding `burst` requests: never more than `rate` per second."""
    return max(1, math.ceil(burst / rate))


@dataclass
class _Key:
    expires: float = 0.0  # monotonic: the end of the lease
    left: int = 0  # leased entries not spent yet
    used: int = 0  # requests admitted from this lease
    refused_until: float = 0.0  # monotonic: refused here until then


class RateLimiter:
    def __init__(self, rate: float, burst: int, url: str | None = None) -> None:
        self.rate, self.burst = rate, burst
        self.window = window_seconds(rate, burst)
        self.item: RateLimitItem = RateLimitItemPerSecond(burst, self.window, namespace="mifo")
        self.storage: MemoryStorage | RedisStorage
        self._client: Any = None
        self.lease_max = 1  # in process an entry costs microseconds: no leases
        if url:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # One retry: a connection closed by a restarted server reconnects at once.
            self._client = aioredis.Redis.from_url(
                url,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 1),
            )
            options: dict[str, Any] = {"connection_pool": self._client.connection_pool}
            self.storage = RedisStorage(
                f"async+{url}", implementation="redispy", key_prefix="mifo:rate", **options
            )
            # At most a quarter of the burst, so that processes sharing a key all get a share.
            self.lease_max = max(1, min(int(rate * LEASE_SECONDS), burst // 4))
        else:
            self.storage = MemoryStorage()
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.shared = url is not None
        self._keys: dict[str, _Key] = {}
        self._fetching: dict[str, asyncio.Future[None]] = {}  # a key's entries being taken
        self._down_until: float | None = None  # set while Redis is out: the next try

    async def take(self, name: str) -> float:
        """0 when the request is admitted, else the seconds until it would be.

        Runs on the event loop only: nothing awaits between reading and changing a key."""
        while True:
            now = time.monotonic()
            key = self._keys.get(name)
            if key is not None:
                if now < key.refused_until:
                    return key.refused_until - now
                if key.left > 0 and now < key.expires:
                    key.left -= 1
                    key.used += 1
                    return 0.0
            pending = self._fetching.get(name)
            if pending is None:
                break
            await asyncio.shield(pending)  # one request at a time asks for a key's entries
        if self._down_until is not None:
            if now < self._down_until:
                return 0.0
            self._down_until = now + RETRY_SECONDS  # this request tries Redis again
        done = asyncio.get_running_loop().create_future()
        self._fetching[name] = done
        try:
            wait = await self._ask(name, key, now)
        except Exception as exc:  # a Redis outage must not take the API down with it
            if self._down_until is None:
                log.warning(
                    "rate limiter unavailable, requests admitted unlimited until it is back: "
                    "%s: %s",
                    type(exc).__name__,
                    exc,
                )
            self._down_until = time.monotonic() + RETRY_SECONDS
            return 0.0
        finally:
            del self._fetching[name]
            done.set_result(None)
        if self._down_until is not None:
            self._down_until = None
            log.info("rate limiter reachable again, limits apply")
        return wait

    async def _ask(self, name: str, key: _Key | None, now: float) -> float:
        # A key that spent a lease within the last period gets one entry more than it used.
        recent = key is not None and now < key.expires + LEASE_SECONDS
        want = min(self.lease_max, key.used + 1) if key is not None and recent else 1
        granted = 0
        if want > 1 and await self.strategy.hit(self.item, name, cost=want):
            granted = want
        elif await self.strategy.hit(self.item, name):
            granted = 1
        if len(self._keys) >= MAX_KEYS:  # forgetting a key only costs it a Redis call
            live = {k: v for k, v in self._keys.items() if max(v.expires, v.refused_until) > now}
            self._keys = live if len(live) < MAX_KEYS // 2 else {}
        if granted:
            self._keys[name] = _Key(
                expires=time.monotonic() + LEASE_SECONDS, left=granted - 1, used=1
            )
            return 0.0
        reset, _ = await self.strategy.get_window_stats(self.item, name)
        wait = max(reset - time.time(), 0.001)
        self._keys[name] = _Key(refused_until=time.monotonic() + wait)
        return wait

    def describe(self) -> str:
        where = "Redis, shared by the API processes" if self.shared else "this process"
        return f"{self.burst} requests per key in any {self.window} s ({where})"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def retry_after(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
