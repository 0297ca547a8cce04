"""The per-key rate limit: exactly the burst under concurrency, in process and through Redis;
fail-open with one warning per Redis outage, limits again once it is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from core import ratelimit
from core.ratelimit import RateLimiter
from core.settings import Settings
from tests.helpers.db import bearer, new_key
from tests.helpers.servers import free_port
from tests.helpers.wait import wait_until

SHARED = "redis://127.0.0.1:6379/14"
MISSING = "/v1/jobs/00000000-0000-4000-8000-000000000000"  # the status poll: 404 once admitted


@pytest.fixture
def db_url(postgres_url: str) -> str:
    return postgres_url


@contextlib.contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server of this test's own on `port`, keeping nothing on disk."""
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)

    def answers() -> bool:
        with contextlib.suppress(redis.ConnectionError):
            return bool(client.ping())
        return False

    try:
        wait_until(answers, 10, f"redis-server on port {port} did not start")
        yield proc
    finally:
        client.close()
        proc.kill()
        proc.wait(10)


def _at_once(client: TestClient, n: int) -> list[int]:
    """`n` requests released together from `n` threads; their status codes."""
    barrier = threading.Barrier(n)
    codes: list[int] = []

    def one(i: int) -> None:
        barrier.wait()
        codes.append(client.get(MISSING if i % 2 else "/v1/jobs?limit=1").status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


@pytest.mark.parametrize("where", ["process", "redis"])
def test_a_fresh_key_sends_its_whole_burst_at_once_and_no_more(
    settings: Settings, api_key: str, where: str
) -> None:
    # A 20 s window (40 at 2/s), so that a slow machine still sends the 41st inside it.
    s = settings.model_copy(
        update={
            "rate_limit_per_second": 2,
            "rate_limit_burst": 40,
            "rate_limit_url": SHARED if where == "redis" else None,
        }
    )
    try:
        with TestClient(create_app(s), headers=bearer(api_key)) as c:
            codes = _at_once(c, 40)
            assert sorted(codes) == [200] * 20 + [404] * 20, codes
            r = c.get(MISSING)
            assert r.status_code == 429, r.text
            assert r.json()["field"] == "Authorization" and r.json()["fix"]
            assert 1 <= int(r.headers["retry-after"]) <= 20
    finally:
        redis.Redis.from_url(SHARED).flushdb()


@pytest.mark.parametrize("where", ["process", "redis"])
def test_the_default_limit_admits_exactly_its_burst_to_concurrent_takes(where: str) -> None:
    """The defaults (20/s, bursts of 40): 80 takes at once, from two API processes when they
    share Redis: 40 admitted, the rest told how long to wait (at most the 2 s window)."""
    s = Settings()
    url = SHARED if where == "redis" else None
    key = f"burst-{uuid.uuid4().hex}"

    async def run() -> list[float]:
        limiters = [RateLimiter(s.rate_limit_per_second, s.rate_limit_burst, url) for _ in "ab"]
        try:
            one = limiters[0] if url is None else None
            return await asyncio.gather(
                *((one or limiters[i % 2]).take(key) for i in range(2 * s.rate_limit_burst))
            )
        finally:
            for limiter in limiters:
                await limiter.close()

    try:
        waits = asyncio.run(run())
        assert waits.count(0.0) == s.rate_limit_burst == 40
        assert all(0 < w <= 2 for w in waits if w)
    finally:
        redis.Redis.from_url(SHARED).flushdb()


def test_window_is_whole_seconds_never_above_the_rate() -> None:
    assert ratelimit.window_seconds(20, 40) == 2
    assert ratelimit.window_seconds(0.5, 3) == 6
    assert ratelimit.window_seconds(3, 40) == 14  # 40 in 14 s: 2.86/s, not more than 3/s
    assert ratelimit.window_seconds(1000, 40) == 1


def test_a_redis_outage_admits_requests_with_one_warning_then_limits_resume(
    settings: Settings,
    api_key: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ratelimit, "RETRY_SECONDS", 0.2)
    port = free_port()
    s = settings.model_copy(
        update={
            "rate_limit_per_second": 0.1,
            "rate_limit_burst": 3,
            "rate_limit_url": f"redis://127.0.0.1:{port}/0",
        }
    )
    caplog.set_level(logging.INFO, logger="core.ratelimit")

    def records(level: int) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "core.ratelimit" and r.levelno == level]

    with TestClient(create_app(s), headers=bearer(api_key)) as c:
        with redis_server(port):
            assert [c.get(MISSING).status_code for _ in range(3)] == [404] * 3  # all 3 spent
        # Redis is gone: every request is admitted, and one warning says so.
        assert [c.get(MISSING).status_code for _ in range(30)] == [404] * 30
        assert sorted(_at_once(c, 20)) == [200] * 10 + [404] * 10
        assert len(records(logging.WARNING)) == 1, caplog.text
        assert "unavailable" in records(logging.WARNING)[0].getMessage()
        assert not records(logging.INFO)
        with redis_server(port):  # back, empty
            time.sleep(0.3)  # the behaviour under test: past RETRY_SECONDS, Redis is tried again
            assert [c.get(MISSING).status_code for _ in range(4)] == [404] * 3 + [429]
            assert len(records(logging.INFO)) == 1, caplog.text
        # A second outage: a second warning, once. (The refused key stays refused: its window
        # is full until its oldest request leaves it.)
        other = bearer(new_key(s, "tests"))
        assert [c.get(MISSING, headers=other).status_code for _ in range(10)] == [404] * 10
        assert c.get(MISSING).status_code == 429
        assert len(records(logging.WARNING)) == 2


def test_a_busy_key_asks_redis_once_per_few_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leases: the status poll must not pay a Redis round trip per request (bench/load.py)."""
    limiter = RateLimiter(1000, 1000, SHARED)  # leases of up to 100 entries
    calls: list[int] = []
    hit = limiter.strategy.hit

    async def counted(*a: object, **k: int) -> bool:
        calls.append(k.get("cost", 1))
        return await hit(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(limiter.strategy, "hit", counted)

    async def run() -> list[float]:
        try:
            return [await limiter.take("busy") for _ in range(200)]
        finally:
            await limiter.close()

    try:
        assert asyncio.run(run()) == [0.0] * 200
        assert len(calls) < 40 and sum(calls) <= 200 + max(calls), calls
    finally:
        redis.Redis.from_url(SHARED).flushdb()
