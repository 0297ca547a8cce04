"""429 from a real `mifo serve` with a small rate limit: the client waits for Retry-After
and succeeds; with retries=0 the 429 is raised."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from mifo_client import Client, RateLimitedError
from tests.helpers.serve import serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # 2 requests in any 2 s window (core/ratelimit.py: window = burst / rate).
    env = {"MIFO_RATE_LIMIT_PER_SECOND": "1", "MIFO_RATE_LIMIT_BURST": "2"}
    with serve(tmp_path_factory.mktemp("limited"), **env) as base:
        yield base


class Recording(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.log: list[tuple[float, str, int, str | None]] = []  # (sent, path, status, Retry-After)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.monotonic()
        response = self.inner.handle_request(request)
        self.log.append(
            (sent, request.url.path, response.status_code, response.headers.get("retry-after"))
        )
        return response


def test_without_retries_a_429_is_raised_with_its_problem_fields(limited: str) -> None:
    time.sleep(2.5)  # an empty window
    with Client(limited, retries=0) as client, pytest.raises(RateLimitedError) as info:
        for _ in range(5):
            client.jobs_page()
    error = info.value
    assert error.status == 429 and error.type == "/problems/rate_limited"
    assert error.retry_after is not None and error.retry_after >= 1
    assert error.field == "Authorization" and error.fix and "Retry-After" in error.fix


def test_the_client_waits_for_retry_after_then_succeeds(limited: str) -> None:
    time.sleep(2.5)
    transport = Recording()
    with Client(limited, retries=5, transport=transport) as client:
        pages = [client.jobs_page() for _ in range(4)]
        assert client.concepts_page().total == 0
    assert all(p.total == 0 for p in pages)
    log = transport.log
    refused = [i for i, entry in enumerate(log) if entry[2] == 429]
    assert refused, log
    for i in refused:
        sent, path, _, asked = log[i]
        assert asked is not None and float(asked) >= 1
        retried_at, again, _, _ = log[i + 1]
        assert again == path and retried_at - sent >= float(asked) - 0.05, log
    assert log[-1][2] == 200
