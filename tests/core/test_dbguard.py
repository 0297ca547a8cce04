"""A PostgreSQL server that stops answering while the kernel keeps acknowledging: calls fail
within the answer timeout and their connections are discarded, not pooled again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.db import Timeouts, make_engine
from tests.helpers.servers import TcpProxy

LIMIT = 2.0


@pytest.fixture
def proxied(postgres_url: str) -> Iterator[tuple[Engine, TcpProxy]]:
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    engine = make_engine(url, Timeouts(connect=2, statement=1, answer=LIMIT))
    engine.info = {"discarded": 0}  # type: ignore[attr-defined]
    event.listen(engine.pool, "invalidate", lambda *_: _count(engine))
    try:
        yield engine, proxy
    finally:
        proxy.flow()
        engine.dispose()
        proxy.stop()


def _count(engine: Engine) -> None:
    engine.info["discarded"] += 1  # type: ignore[attr-defined]


def _discarded(engine: Engine) -> int:
    return engine.info["discarded"]  # type: ignore[attr-defined]


def _timed(engine: Engine, sql: str = "SELECT 1") -> tuple[str, float]:
    start = time.monotonic()
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
        return "ok", time.monotonic() - start
    except OperationalError:
        return "error", time.monotonic() - start


def test_a_stalled_statement_fails_within_the_answer_timeout_and_is_discarded(
    proxied: tuple[Engine, TcpProxy],
) -> None:
    engine, proxy = proxied
    with Session(engine) as session:  # as the service uses it
        session.execute(text("SELECT 1"))
        proxy.stall()
        start = time.monotonic()
        with pytest.raises(OperationalError):
            session.execute(text("SELECT 2"))
        assert time.monotonic() - start < LIMIT + 1
    assert _discarded(engine) == 1  # taken for a lost connection and closed, never pooled
    # A pooled connection is pinged with the same deadline, and a new one cannot open.
    assert _timed(engine)[0] == "error"
    proxy.flow()
    assert _timed(engine)[0] == "ok"


def test_a_pooled_connection_whose_server_stalled_fails_its_ping_in_time(
    proxied: tuple[Engine, TcpProxy],
) -> None:
    engine, proxy = proxied
    assert _timed(engine)[0] == "ok" and engine.pool.checkedin() == 1
    proxy.stall()
    outcome, seconds = _timed(engine)  # the ping (LIMIT), then a new connection (connect)
    assert outcome == "error" and seconds < LIMIT + 2 + 1.5
    assert _discarded(engine) == 1
    proxy.flow()
    assert _timed(engine)[0] == "ok"


def test_a_slow_statement_on_a_live_server_is_ended_by_the_server_not_the_guard(
    proxied: tuple[Engine, TcpProxy],
) -> None:
    engine, _ = proxied
    outcome, seconds = _timed(engine, "SELECT pg_sleep(3)")  # statement_timeout is 1 s
    assert outcome == "error" and seconds < LIMIT
    assert _discarded(engine) == 0  # a cancelled statement leaves a healthy connection
    assert _timed(engine, "SELECT pg_sleep(0.5)")[0] == "ok"  # answered in time: untouched
