"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import StateDep
from api.metrics import registry_for
from api.problems import PROBLEM_RESPONSE, Problem
from api.schemas import Health
from core.db import check_migrated
from worker.app import check_broker

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (no dependency is checked)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is unreachable."}},
)
def readyz(state: StateDep) -> Response:
    """The database (migrated), the broker and the object store are reachable."""
    checks: dict[str, str] = {}
    for name, probe in (
        ("database", lambda: _database(state)),
        ("broker", lambda: check_broker(state.celery)),
        ("storage", state.storage.check),
    ):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {exc}"
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


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
                401, "unauthorized", "Missing or wrong metrics token",
                "This server protects /metrics with MIFO_METRICS_TOKEN.", field="Authorization",
                fix="send `Authorization: Bearer <MIFO_METRICS_TOKEN>` (Prometheus: "
                "`authorization: {credentials: ...}` in the scrape config)",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
    return Response(generate_latest(registry_for(state)), media_type=CONTENT_TYPE_LATEST)
