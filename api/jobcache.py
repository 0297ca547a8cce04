"""Per-process cache of each job's public JSON, for cheap status polls.

The database row is the truth. Entries are used only while this process is subscribed to the
"job changed" events (Redis pub/sub, published after every committed change), and an event
removes its job's entry as soon as it arrives, so a poll never answers a state older than a
change event this process has received. A lost message costs at most TTL_SECONDS. A body
read from the database is kept only if no event arrived while it was read, so a slow read
cannot put back an older state. Without pub/sub, or while Redis is unreachable, every poll
reads the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from typing import Any

from core.events import CHANNEL_PREFIX

log = logging.getLogger(__name__)

TTL_SECONDS = 5.0  # like the event streams' fallback re-read (core.events.FALLBACK_SECONDS)
MAX_JOBS = 10_000
RETRY_SECONDS = 1.0  # after losing Redis, between attempts to subscribe again

Entry = tuple[float, uuid.UUID, bytes]  # stored at, tenant, body


class JobCache:
    def __init__(self, url: str | None, clock: Any = time.monotonic) -> None:
        self.url, self.clock = url, clock
        self.live = False  # subscribed to the change events: entries may be served
        self._entries: dict[uuid.UUID, dict[str, Entry]] = {}  # job -> base URL -> entry
        self._events = 0  # change events seen, of any job
        self._lock = threading.Lock()  # routes in worker threads call changed() too

    def get(self, job_id: uuid.UUID, base: str) -> tuple[uuid.UUID, bytes] | None:
        """(tenant, body), or None: read the database."""
        if not self.live:
            return None
        hit = self._entries.get(job_id, {}).get(base)
        if hit is None or self.clock() - hit[0] > TTL_SECONDS:
            return None
        return hit[1], hit[2]

    def mark(self) -> int:
        """Take before reading the database; give to put() with what was read."""
        return self._events

    def put(self, job_id: uuid.UUID, base: str, tenant: uuid.UUID, body: bytes, mark: int) -> None:
        with self._lock:
            if not self.live or mark != self._events:
                return
            if len(self._entries) >= MAX_JOBS:
                self._entries.clear()
            self._entries.setdefault(job_id, {})[base] = (self.clock(), tenant, body)

    def changed(self, job_id: uuid.UUID | None = None) -> None:
        """Forget a job (None: every job); reads in flight will not be kept."""
        with self._lock:
            self._events += 1
            if job_id is None:
                self._entries.clear()
            else:
                self._entries.pop(job_id, None)

    def _down(self) -> None:
        with self._lock:
            self.live = False
            self._events += 1
            self._entries.clear()

    async def follow(self, stop: asyncio.Event) -> None:
        """Apply change events until `stop`; reconnect after a Redis outage."""
        if not self.url:
            return
        import redis.asyncio as aioredis

        while not stop.is_set():
            client = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=1, health_check_interval=1
            )
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                while not stop.is_set():
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None:
                        await pubsub.ping()  # a dead connection raises here
                    elif msg["type"] == "psubscribe":
                        self.live = True
                    elif msg["type"] == "pmessage":
                        self._on_message(msg["channel"])
            except Exception as exc:
                if self.live:
                    log.warning("job change events lost, polls read the database: %s", exc)
                self._down()
            finally:
                self._down()
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:  # already broken
                    pass
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_SECONDS)

    def _on_message(self, channel: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        try:
            self.changed(uuid.UUID(name.removeprefix(CHANNEL_PREFIX)))
        except ValueError:
            self.changed(None)
