"""Per-process cache of each job's public JSON, for cheap status polls.

The database row is the truth. Entries are used only while this process is subscribed to the
"job changed" events (Redis pub/sub, published after every committed change), and an event
removes its job's entry as soon as it arrives, so a poll never answers a state older than a
change event this process has received. A lost message costs at most TTL_SECONDS; polled
entries are re-read in the background before they expire. A body
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
from collections.abc import Awaitable, Callable
from typing import Any

from core.events import CHANNEL_PREFIX

log = logging.getLogger(__name__)

TTL_SECONDS = 5.0  # like the event streams' fallback re-read (core.events.FALLBACK_SECONDS)
REREAD_SECONDS = 4.0  # a poll of an older entry re-reads the job in the background
REREADERS = 2  # background re-reads at a time
MAX_JOBS = 10_000
MAX_BASES = 4  # base URLs (Host headers) kept per job; the oldest goes first
RETRY_SECONDS = 1.0  # after losing Redis, between attempts to subscribe again

Entry = tuple[float, uuid.UUID, bytes]  # stored at, tenant, body


class JobCache:
    def __init__(self, url: str | None, clock: Any = time.monotonic) -> None:
        self.url, self.clock = url, clock
        self.live = False  # subscribed to the change events: entries may be served
        self._entries: dict[uuid.UUID, dict[str, Entry]] = {}  # job -> base URL -> entry
        self._events = 0  # change events seen, of any job
        self._lock = threading.Lock()  # routes in worker threads call changed() too
        self._rereading: set[uuid.UUID] = set()
        # Few at a time: many entries fall due together, and a burst of reads in the thread
        # pool starves the event loop (every poll waited ~100 ms in tests with 50 jobs).
        self._readers = asyncio.Semaphore(REREADERS)
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, job_id: uuid.UUID, base: str) -> tuple[uuid.UUID, bytes, bool] | None:
        """(tenant, body, due for a re-read), or None: read the database."""
        if not self.live:
            return None
        hit = self._entries.get(job_id, {}).get(base)
        if hit is None:
            return None
        age = self.clock() - hit[0]
        if age > TTL_SECONDS:
            with self._lock:
                bases = self._entries.get(job_id, {})
                if bases.get(base) is hit:
                    del bases[base]
                    if not bases:
                        del self._entries[job_id]
            return None
        return hit[1], hit[2], age > REREAD_SECONDS

    def owner(self, job_id: uuid.UUID) -> uuid.UUID | None:
        """The tenant of a job with a fresh entry under any base URL, or None: not known."""
        if not self.live:
            return None
        now = self.clock()
        for stored, tenant, _ in list(self._entries.get(job_id, {}).values()):
            if now - stored <= TTL_SECONDS:
                return tenant
        return None

    def reread(self, job_id: uuid.UUID, read: Callable[[], Awaitable[object]]) -> None:
        """Run `read` (which puts the fresh body) in the background, once per job at a time:
        a polled job is re-read before its entry expires, so no poll waits for it."""
        if job_id in self._rereading:
            return
        self._rereading.add(job_id)

        async def run() -> None:
            try:
                async with self._readers:
                    await read()
            except Exception as exc:  # the database may be down: the entry just expires
                log.warning("re-reading job %s failed: %s", job_id, exc)
            finally:
                self._rereading.discard(job_id)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def mark(self) -> int:
        """Take before reading the database; give to put() with what was read."""
        return self._events

    def put(self, job_id: uuid.UUID, base: str, tenant: uuid.UUID, body: bytes, mark: int) -> None:
        """Keep the body read for the job's owner `tenant` (never for anyone else's request).

        Each job keeps its MAX_BASES newest base URLs; expired entries go when one is put. At
        MAX_JOBS jobs, the job cached longest ago makes room (O(1), under the lock)."""
        with self._lock:
            if not self.live or mark != self._events:
                return
            now = self.clock()
            while job_id not in self._entries and len(self._entries) >= MAX_JOBS:
                del self._entries[next(iter(self._entries))]  # the job cached longest ago
            bases = self._entries.setdefault(job_id, {})
            bases.pop(base, None)  # re-inserted as the newest
            for old in [b for b, e in bases.items() if now - e[0] > TTL_SECONDS]:
                del bases[old]
            while len(bases) >= MAX_BASES:
                del bases[next(iter(bases))]
            bases[base] = (now, tenant, body)

    def changed(self, job_id: uuid.UUID | None = None) -> None:
        """Forget a job (None: every job); reads in flight will not be kept."""
        with self._lock:
            self._events += 1
            if job_id is None:
                self._entries.clear()
            else:
                self._entries.pop(job_id, None)

    def drop(self, job_id: uuid.UUID) -> None:
        """Forget a job found missing (reads in flight may still be kept)."""
        with self._lock:
            self._entries.pop(job_id, None)

    def cached(self) -> dict[uuid.UUID, list[str]]:  # base URLs per job, oldest first
        return {job: list(bases) for job, bases in list(self._entries.items())}

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
