"""The FastAPI application: `create_app(settings)`; `app_factory` for uvicorn --factory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.concurrency import run_in_threadpool

from api import console
from api.http import problems
from api.http.bodylimit import BodyLimit
from api.http.state import AppState
from api.routes import (
    artifacts,
    concepts,
    evaluations,
    health,
    jobs,
    segmentations,
    syntheses,
    tenant,
)
from api.routes import export as concept_export
from core.auth import REFRESH_SECONDS
from core.settings import Settings, get_settings

log = logging.getLogger("mifo")

DESCRIPTION = """
Learn instance tokens from one image and one mask per instance (MIFO on Stable Diffusion
2.1), then synthesise new images of those instances with one box per instance.

Flow: `POST /v1/concepts` (multipart) -> poll `GET /v1/jobs/{id}` or follow
`GET /v1/jobs/{id}/events` -> `POST /v1/concepts/{id}/syntheses` -> poll -> download the
image URLs. Send `Authorization: Bearer <key>`; every POST takes an `Idempotency-Key`.
Errors are problem JSON (RFC 9457) with `field` and `fix`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Refuses a decompression bomb anywhere PIL decodes, not only in the upload checks.
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
        # Raises core.db.NotMigrated (naming `mifo migrate`) before serving anything.
        state = app.state.mifo = AppState.build(settings)
        # Everything loaded so far lives as long as the process: keep it out of the cyclic
        # collector, whose full passes over it paused every request for ~100 ms under load.
        gc.freeze()
        gc.set_threshold(10_000, 10, 100)
        # Only what is this process' own; the service's periodic duties (reconcile, webhooks,
        # maintenance) run elsewhere (core.duties): celery beat, or `mifo serve`'s threads.
        stop = asyncio.Event()
        loops = [
            # This process' job-status cache follows the change events (pub/sub).
            asyncio.create_task(state.job_cache.follow(stop)),
            # This process' API-key cache picks up revocations.
            asyncio.create_task(_key_refresher(state, stop)),
        ]
        warming = asyncio.create_task(_warm_tokenizer(state))
        try:
            yield
        finally:
            stop.set()
            warming.cancel()  # a load still running finishes in its thread, unawaited
            await asyncio.gather(*loops, warming, return_exceptions=True)
            await state.close()

    # /docs and /redoc load their scripts from this server, never from a CDN.
    app = FastAPIOffline(
        static_url="/docs-assets",
        title="MIFO",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={
            400: problems.PROBLEM_RESPONSE,
            401: problems.PROBLEM_RESPONSE,
            422: problems.PROBLEM_RESPONSE,
            429: problems.PROBLEM_RESPONSE,
            500: problems.PROBLEM_RESPONSE,
            503: problems.PROBLEM_RESPONSE,
        },
    )
    problems.install(app)
    # Before anything reads the body: an oversized upload is refused without receiving it.
    app.add_middleware(
        BodyLimit,
        max_upload_bytes=settings.max_upload_bytes,
        max_instances=settings.max_instances,
    )
    routers = (concepts, syntheses, evaluations, segmentations, jobs, artifacts, tenant, health)
    for module in routers:
        app.include_router(module.router)
    app.include_router(concept_export.router)  # GET /v1/concepts/{id}/export
    console.install(app)  # the web console at /console/, and / redirecting there
    return app


async def _every(seconds: float, stop: asyncio.Event, work: Callable[[], Any]) -> None:
    """Run `work` in a thread, again at once while it reports progress, else after `seconds`."""
    failing = False
    while not stop.is_set():
        try:
            busy = await run_in_threadpool(work)
            failing = False
        except Exception as exc:  # the database may be down: keep trying, say so once
            if not failing:
                log.warning("background task failed, retrying: %s", exc)
            failing, busy = True, False
        if not busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)


async def _warm_tokenizer(state: AppState) -> None:
    """Load the base model's tokenizer now rather than in the first request that checks a
    prompt (importing transformers took ~0.6 s of that request). A failure is only logged:
    such a request then loads it again and answers with the reason."""
    try:
        await run_in_threadpool(state.tokenizer)
    except Exception as exc:
        log.warning("tokenizer of %s not loaded at start-up: %s", state.settings.base_model, exc)


async def _key_refresher(state: AppState, stop: asyncio.Event) -> None:
    await _every(REFRESH_SECONDS, stop, lambda: state.verifier.refresh(state.sessions))


def app_factory() -> FastAPI:
    """For `uvicorn --factory api.main:app_factory`: settings read at start-up."""
    return create_app()
