"""The web console: static files under /console/ that use only the public /v1 API.

Plain HTML, CSS and ES modules shipped in the package (no build step, nothing from a CDN),
so the console works offline wherever the API runs."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    """Newcomers land on the console."""
    return RedirectResponse("console/", status_code=307)


@router.get("/console")
def console() -> RedirectResponse:
    """The console's pages use relative links: they need the trailing slash."""
    return RedirectResponse("console/", status_code=307)


def install(app: FastAPI) -> None:
    """Serve the console at /console/ and redirect / and /console there."""
    app.include_router(router)
    app.mount("/console", StaticFiles(directory=STATIC, html=True), name="console")
