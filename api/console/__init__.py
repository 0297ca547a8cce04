"""The web console: static files under /console/ that use only the public /v1 API.

Plain HTML, CSS and ES modules shipped in the package (no build step, nothing from a CDN),
so the console works offline wherever the API runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC = Path(__file__).resolve().parent / "static"
# The console holds the user's API key: only its own scripts and styles run, it talks only to
# this origin, and no other site may frame it. Images may come from S3's presigned URLs.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob: http: https:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    """Newcomers land on the console."""
    return RedirectResponse("console/", status_code=307)


@router.get("/console")
def console() -> RedirectResponse:
    """The console's pages use relative links: they need the trailing slash."""
    return RedirectResponse("console/", status_code=307)


class ConsoleFiles(StaticFiles):
    """The static files, each with the console's content security policy."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Content-Security-Policy"] = POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install(app: FastAPI) -> None:
    """Serve the console at /console/ and redirect / and /console there."""
    app.include_router(router)
    app.mount("/console", ConsoleFiles(directory=STATIC, html=True), name="console")
