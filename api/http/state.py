"""What the API process holds: built once at start-up from Settings."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.http.jobcache import JobCache
from core import engine
from core.auth import LOCAL_TENANT, KeyVerifier, get_or_create_tenant, signing_key
from core.db import check_migrated, engine_from_settings, make_sessionmaker, session_scope
from core.events import Publisher
from core.queue import Broker
from core.ratelimit import RateLimiter
from core.settings import Settings
from core.storage import Storage, storage_from_settings

log = logging.getLogger("mifo")

# Set by the server of this process when it begins to stop (mifo_cli.embedded.Server): a
# request waiting for its job (Prefer: wait) answers its 202 at once instead of being cut off
# when the server's drain time runs out. One per process, as the server's stop is.
STOPPING = threading.Event()
STOPPING_POLL_SECONDS = 0.2  # how often a waiting request looks at it

# Readiness checks of what this process runs besides the API, by name (`mifo serve`: its
# worker child); each raises when it fails. A deployment's workers have their own supervisor.
PROBES: dict[str, Callable[[], object]] = {}

MODEL_CHECK_SECONDS = 30.0


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    broker: Broker
    link_key: bytes
    anonymous_tenant: uuid.UUID | None = None  # set: requests without a key belong to it
    verifier: KeyVerifier = field(default_factory=KeyVerifier)
    limiter: RateLimiter | None = None
    job_cache: JobCache = field(default_factory=lambda: JobCache(None))
    publisher: Publisher = field(default_factory=lambda: Publisher(None))
    _creating: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _model_ok_until: float = field(default=0.0, init=False, repr=False)

    @contextlib.contextmanager
    def creating_job(self) -> Iterator[None]:
        """Hold from the capacity check (core.submissions.check_capacity) to the commit of the new job.

        PostgreSQL serialises a tenant's requests on its locked row. SQLite ignores FOR UPDATE
        and opens the write transaction only at the INSERT, so concurrent requests would all
        count the same active jobs: there (embedded mode, one API process) they take turns."""
        if self.engine.dialect.name != "sqlite":
            yield
            return
        with self._creating:
            yield

    def job_changed(self, *job_ids: uuid.UUID) -> None:
        """After a route commits job changes: this process' cache, then every other one."""
        for job_id in job_ids:
            self.job_cache.changed(job_id)
            self.publisher.publish(job_id)

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        engine = engine_from_settings(settings)
        check_migrated(engine)  # refuse to serve an unmigrated database
        state = cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            storage=storage_from_settings(settings),
            broker=Broker.from_settings(settings),
            link_key=signing_key(settings),
            job_cache=JobCache(settings.events_url),
            publisher=Publisher(settings.events_url),
        )
        if settings.rate_limit_per_second > 0:
            state.limiter = RateLimiter(
                settings.rate_limit_per_second, settings.rate_limit_burst, settings.redis_url
            )
            log.info("rate limit: %s", state.limiter.describe())
        if anonymous_allowed(settings):
            with session_scope(state.sessions) as session:
                state.anonymous_tenant = get_or_create_tenant(session, LOCAL_TENANT)[0].id
            log.warning(
                "API keys are NOT required: embedded mode bound to loopback %s; requests "
                "without a key belong to tenant %r (MIFO_REQUIRE_API_KEYS=true demands keys)",
                settings.bind_host,
                LOCAL_TENANT,
            )
        else:
            log.info("API keys required (Authorization: Bearer ...; `mifo keys create`)")
        return state

    def check_base_model(self) -> None:
        """Raise (ModelLoadError, naming what is missing) unless workers can load the
        configured base model from what is on disk; a success is trusted for a while."""
        now = time.monotonic()
        if now < self._model_ok_until:
            return
        engine.check_base_model(self.settings.base_model)  # the size uploads are checked at too
        self._model_ok_until = now + MODEL_CHECK_SECONDS

    def resolution(self) -> int:
        """The side in pixels the base model learns at (from its configs, no weights)."""
        return _resolution(self.settings.base_model)

    def attention_structure(self) -> Any:
        """Where the base model's UNet has cross-attention (from its config, no weights, no
        torch): what a request's options are checked against (api/checks/model.py)."""
        return _attention_structure(self.settings.base_model)

    def tokenizer(self) -> Any:
        """The base model's tokenizer (no weights, no torch): loaded on first use."""
        return _load_tokenizer(self.settings.base_model)

    async def close(self) -> None:
        if self.limiter is not None:
            await self.limiter.close()
        self.engine.dispose()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def anonymous_allowed(settings: Settings) -> bool:
    return settings.embedded and not settings.require_api_keys and is_loopback(settings.bind_host)


_TOKENIZER_LOCK = threading.Lock()


def _load_tokenizer(spec: str) -> Any:
    # transformers' lazy imports are not thread-safe: concurrent first requests used to fail
    # with "cannot import name CLIPTokenizer". One loader at a time, then the cache.
    with _TOKENIZER_LOCK:
        return _cached_tokenizer(spec)


@functools.cache
def _cached_tokenizer(spec: str) -> Any:
    return engine.load_tokenizer(spec)


@functools.cache
def _resolution(spec: str) -> int:
    return engine.native_resolution(spec)


@functools.cache
def _attention_structure(spec: str) -> Any:
    return engine.attention_structure(spec)
