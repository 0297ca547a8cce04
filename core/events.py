"""Job change notifications: Redis pub/sub when configured, database polling otherwise.

The database row is the truth. A notification only says "this job changed, read it again",
so a lost message costs at most one poll interval and never a wrong state.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # embedded mode: how often a stream re-reads the job row
FALLBACK_SECONDS = 5.0  # with pub/sub: re-read anyway, in case a message was lost


CHANNEL_PREFIX = "mifo:job:"


def channel(job_id: uuid.UUID | str) -> str:
    return f"{CHANNEL_PREFIX}{job_id}"


class Publisher:
    """Announce that a job row changed, after the commit (workers, and API routes that change
    jobs: their status caches listen). Never fails the job."""

    def __init__(self, url: str | None) -> None:
        self._client: Any = None
        if url:
            import redis

            self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def publish(self, job_id: uuid.UUID) -> None:
        if self._client is None:
            return
        try:
            self._client.publish(channel(job_id), "changed")
        except Exception as exc:  # the stream falls back to polling
            log.warning("could not publish progress of job %s: %s", job_id, exc)


@asynccontextmanager
async def changes(url: str | None, job_id: uuid.UUID) -> AsyncIterator[Any]:
    """Yield an async callable `wait()` that returns once the job may have changed."""
    if not url:

        async def poll() -> None:
            await asyncio.sleep(POLL_SECONDS)

        yield poll
        return

    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel(job_id))

        async def wait() -> None:
            await pubsub.get_message(ignore_subscribe_messages=True, timeout=FALLBACK_SECONDS)

        yield wait
    finally:
        await pubsub.aclose()
        await client.aclose()
