"""Evaluations: the paper's quality metrics of a ready concept (SIM-C, SIM-D, NSIM-D, CS),
from syntheses of recontextualisation prompts with one box per instance."""

from __future__ import annotations

import functools
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.checks import evaluations as checks
from api.http.accepted import Accepted, accept, answer, idempotent
from api.http.deps import SessionDep, StateDep, TenantDep
from api.http.idempotency import KeyHeader
from api.http.prefer import WaitDep, finished_response
from api.http.problems import responses
from api.http.state import AppState
from api.present import Presenter
from api.routes.jobs import concept_jobs_page
from api.schemas import EvaluationCreate, JobPublic, JobsPublic
from core import kinds, submissions, webhooks

router = APIRouter(prefix="/v1/concepts/{concept_id}/evaluations", tags=["evaluations"])
ERRORS = responses(404, 409, 413, 422, 429, 503)


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses={**ERRORS, **responses(415), **finished_response(JobPublic, "the job")},
)
async def create_evaluation(
    concept_id: uuid.UUID,
    body: EvaluationCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    wait: WaitDep,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Check the prompts against the concept and queue an evaluation job (202): each prompt
    synthesised with one box per instance, every image scored. The job's result holds the
    metrics per token and their mean, each image's scores, and the chart.

    With `Prefer: wait=N`: 200 with the job as GET /v1/jobs/{id} shows it once it ended
    within N seconds."""
    done = await run_in_threadpool(
        _submit, concept_id, body, request, response, session, state, tenant, idempotency_key
    )
    finished = Presenter(request, state).job_by_id
    return await answer(request, response, state, session, wait, done, finished)


def _submit(
    concept_id: uuid.UUID,
    body: EvaluationCreate,
    request: Request,
    response: Response,
    session: Session,
    state: AppState,
    tenant: uuid.UUID,
    idempotency_key: str | None,
) -> Accepted:
    """The submission, in the thread pool: it reads the concept and writes the job."""
    settings = state.settings
    checks.limits(body, settings)
    config = checks.config(body)  # 422 before any lookup
    state.check_base_model()  # 503 model_unavailable: a job would only fail
    events: list[str] | None = list(body.webhook_events or []) or None
    hook = webhooks.requested_hook(body.webhook_url, events, settings)
    concept = submissions.ready_concept(
        session, concept_id, tenant, settings.base_model, to="evaluate"
    )
    params = checks.params(config, concept, state.tokenizer(), settings)
    present = functools.partial(Presenter(request, state).job_by_id, session)
    parts = ("POST", request.url.path, body.model_dump_json())
    idem = idempotent(session, state, tenant, idempotency_key, present, *parts)
    submit = functools.partial(
        submissions.evaluate,
        session,
        state,
        tenant_id=tenant,
        concept_id=concept_id,
        params=params,
        hook=hook,
        attach=idem.attach,
    )
    return accept(request, response, idem, submit, present)


@router.get("", response_model=JobsPublic, responses=responses(404, 422))
def list_evaluations(
    concept_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> JobsPublic:
    """The concept's evaluation jobs, newest first (the concept's `links.evaluations`)."""
    kind = kinds.EVALUATE.name
    return concept_jobs_page(request, session, state, tenant, concept_id, kind, limit, offset)
