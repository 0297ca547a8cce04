"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.http.deps import StateDep
from api.http.metrics import registry_for
from api.http.problems import PROBLEM_RESPONSE
from api.http.state import PROBES
from api.schemas import Health
from core.db import check_migrated
from core.problems import Problem

router = APIRouter(tags=["health"])

PROBE_SECONDS = 3.0  # each readiness check answers within this, whatever hangs behind it


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and serving. Checks nothing else and never waits: it runs on the
    event loop, not in the thread pool that database work can fill."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is unreachable."}},
)
async def readyz(state: StateDep) -> Response:
    """The database (migrated), the broker and the object store answer, and the configured
    base model can be loaded (under `mifo serve`: and its worker runs); each check that fails
    says why. Answers within a few seconds even when a dependency hangs."""
    probes: dict[str, Callable[[], object]] = {
        "database": lambda: _database(state),
        "broker": state.broker.check,
        "storage": state.storage.check,
        "base_model": state.check_base_model,
        **PROBES,
    }
    results = await asyncio.gather(*(_probe(probe) for probe in probes.values()))
    checks = dict(zip(probes, results, strict=True))
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


async def _probe(probe: Callable[[], object]) -> str:
    # Its own thread (not the request pool), so that probes never queue behind requests.
    try:
        await asyncio.wait_for(asyncio.to_thread(probe), PROBE_SECONDS)
    except TimeoutError:
        return f"error: no answer within {PROBE_SECONDS:g} s"
    except Exception as exc:
        return f"error: {exc}"
    return "ok"


def _database(state: StateDep) -> None:
    with state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    check_migrated(state.engine)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"example": 'mifo_jobs{kind="learn",status="queued"} 2.0'}}
        },
        401: PROBLEM_RESPONSE,
    },
)
def metrics(request: Request, state: StateDep) -> Response:
    """Prometheus text format: jobs by kind and status, queue depth, job durations (counts
    over every tenant). With MIFO_METRICS_TOKEN set, send `Authorization: Bearer <token>`."""
    token = state.settings.metrics_token
    if token is not None:
        sent = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(sent, f"Bearer {token.get_secret_value()}".encode()):
            raise Problem(
                "unauthorized",
                "This server protects /metrics with MIFO_METRICS_TOKEN.",
                field="Authorization",
                fix="send `Authorization: Bearer <MIFO_METRICS_TOKEN>` (Prometheus: "
                "`authorization: {credentials: ...}` in the scrape config)",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(generate_latest(registry_for(state)), media_type=CONTENT_TYPE_LATEST)
