"""Syntheses: a prompt with one box per learned token, against a ready concept."""

from __future__ import annotations

import functools
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.checks import syntheses as checks
from api.http.accepted import Accepted, accept, answer, idempotent
from api.http.deps import SessionDep, StateDep, TenantDep
from api.http.idempotency import KeyHeader
from api.http.prefer import WaitDep, finished_response
from api.http.problems import responses
from api.http.state import AppState
from api.present import Presenter
from api.routes.jobs import concept_jobs_page
from api.schemas import JobPublic, JobsPublic, SynthesisCreate
from core import kinds, submissions, webhooks

router = APIRouter(prefix="/v1/concepts/{concept_id}/syntheses", tags=["syntheses"])
ERRORS = responses(404, 409, 413, 422, 429, 503)


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses={**ERRORS, **responses(415), **finished_response(JobPublic, "the job")},
)
async def create_synthesis(
    concept_id: uuid.UUID,
    body: SynthesisCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    wait: WaitDep,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Validate the prompt and boxes against the concept and queue a synthesis job (202).

    Box keys may be tokens (`<asset0>`) or the instance names given at learning time. With
    `Prefer: wait=N`: 200 with the job as GET /v1/jobs/{id} shows it once it ended within N
    seconds."""
    done = await run_in_threadpool(
        _submit, concept_id, body, request, response, session, state, tenant, idempotency_key
    )
    finished = Presenter(request, state).job_by_id
    return await answer(request, response, state, session, wait, done, finished)


def _submit(
    concept_id: uuid.UUID,
    body: SynthesisCreate,
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
    checks.fits_model(config, state.attention_structure())  # 422: layers the model lacks
    events: list[str] | None = list(body.webhook_events or []) or None
    hook = webhooks.requested_hook(body.webhook_url, events, settings)
    concept = submissions.ready_concept(session, concept_id, tenant, settings.base_model)
    params = checks.params(body, config, concept, state.tokenizer())
    present = functools.partial(Presenter(request, state).job_by_id, session)
    parts = ("POST", request.url.path, body.model_dump_json())
    idem = idempotent(session, state, tenant, idempotency_key, present, *parts)
    submit = functools.partial(
        submissions.synthesize,
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
def list_syntheses(
    concept_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> JobsPublic:
    """The concept's synthesis jobs, newest first (the concept's `links.syntheses`)."""
    kind = kinds.SYNTHESIZE.name
    return concept_jobs_page(request, session, state, tenant, concept_id, kind, limit, offset)
