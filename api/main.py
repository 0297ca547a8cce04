"""The FastAPI application: `create_app(settings)`; `app` for `uvicorn api.main:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import problems
from api.routes import artifacts, concepts, health, jobs, syntheses
from api.state import AppState
from core.settings import Settings, get_settings

DESCRIPTION = """
Learn instance tokens from one image and one mask per instance (MIFO on Stable Diffusion
2.1), then synthesise new images of those instances with one box per instance.

Flow: `POST /v1/concepts` (multipart) -> poll `GET /v1/jobs/{id}` or follow
`GET /v1/jobs/{id}/events` -> `POST /v1/concepts/{id}/syntheses` -> poll -> download the
image URLs. Errors are problem JSON (RFC 9457) with `field` and `fix`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Raises core.db.NotMigrated (naming `mifo migrate`) before serving anything.
        app.state.mifo = AppState.build(settings)
        try:
            yield
        finally:
            app.state.mifo.close()

    app = FastAPI(
        title="MIFO",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={500: problems.PROBLEM_RESPONSE},
    )
    problems.install(app)
    for module in (concepts, syntheses, jobs, artifacts, health):
        app.include_router(module.router)
    return app


def app_factory() -> FastAPI:
    """For `uvicorn --factory api.main:app_factory`: settings read at start-up."""
    return create_app()
