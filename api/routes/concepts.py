"""Concepts: upload one image and its instance masks to learn tokens; read; delete."""

from __future__ import annotations

import functools
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.checks.model import fits_model
from api.checks.uploads import learn_inputs, read_upload
from api.http.accepted import Accepted, accept, answer, idempotent
from api.http.deps import SessionDep, StateDep, TenantDep
from api.http.idempotency import KeyHeader
from api.http.prefer import WaitDep, finished_response
from api.http.problems import responses
from api.http.state import AppState
from api.present import CONCEPT_LOAD, Presenter, learn_jobs, next_page
from api.schemas import ConceptCreated, ConceptPublic, ConceptsPublic
from core import submissions, webhooks
from core.models import Concept, Job
from core.problems import not_found

router = APIRouter(prefix="/v1/concepts", tags=["concepts"])
ERRORS = responses(404, 409, 413, 422, 429, 503)


ImageFile = Annotated[UploadFile, File(description="The scene: PNG, JPEG or WebP (by content).")]
MaskFiles = Annotated[
    list[UploadFile],
    File(min_length=1, description="One mask per instance, in order: white = the instance."),
]
NamesField = Annotated[
    str | None, Form(description="Comma-separated instance names.", examples=["red car,blue car"])
]
OptionsField = Annotated[
    str | None,
    Form(
        description="JSON object of LearnConfig fields.",
        examples=['{"phase1_steps": 400, "phase2_steps": 200, "seed": 1}'],
    ),
]
WebhookUrlField = Annotated[
    str | None, Form(description="Receives signed job events (Standard Webhooks).")
]
WebhookEventsField = Annotated[
    str | None, Form(description="Comma-separated: started, progress, completed (default: all).")
]


@router.post(
    "",
    status_code=202,
    response_model=ConceptCreated,
    responses={**ERRORS, **responses(415), **finished_response(ConceptCreated, "learning")},
)
async def create_concept(
    request: Request,
    response: Response,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    image: ImageFile,
    masks: MaskFiles,
    wait: WaitDep,
    names: NamesField = None,
    options: OptionsField = None,
    webhook_url: WebhookUrlField = None,
    webhook_events: WebhookEventsField = None,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Validate the inputs with the engine, store them and queue a learning job (202).

    Nothing is stored when the request is rejected. `Location` names the job to poll. With
    `Prefer: wait=N`: 200 once learning ended within N seconds, with the concept and the job
    as they ended (the 202's shape)."""
    form = (names, options, webhook_url, webhook_events)
    done = await run_in_threadpool(
        _learn, request, response, session, state, tenant, image, masks, form, idempotency_key
    )
    for upload in (image, *masks):  # stored by now: their temporary files are not kept open
        await upload.close()
    finished = functools.partial(_created, request, state=state)
    return await answer(request, response, state, session, wait, done, finished)


def _learn(
    request: Request,
    response: Response,
    session: Session,
    state: AppState,
    tenant: uuid.UUID,
    image: UploadFile,
    masks: list[UploadFile],
    form: tuple[str | None, str | None, str | None, str | None],
    idempotency_key: str | None,
) -> Accepted:
    """The submission, in the thread pool: it reads the upload and writes rows and objects."""
    names, options, webhook_url, webhook_events = form
    settings = state.settings
    state.check_base_model()  # 503 model_unavailable: a job would only fail
    upload = read_upload(image, masks, names, options, settings, state.resolution())
    fits_model(upload.config, state.attention_structure())  # 422: layers the model lacks
    events = [e.strip() for e in webhook_events.split(",")] if webhook_events is not None else None
    hook = webhooks.requested_hook(webhook_url, events, settings)
    present = functools.partial(_created, request, session, state=state)
    parts: list[bytes | str] = ["POST /v1/concepts", upload.image, *upload.masks]
    parts += [field or "" for field in form]
    idem = idempotent(session, state, tenant, idempotency_key, present, *parts)
    submit = functools.partial(
        submissions.learn,
        session,
        state,
        tenant_id=tenant,
        inputs=learn_inputs(upload),
        hook=hook,
        attach=idem.attach,
    )
    return accept(request, response, idem, submit, present)


def _created(
    request: Request, session: Session, job_id: uuid.UUID, *, state: AppState
) -> ConceptCreated | None:
    """The concept and its learning job; None once the concept is gone (deleted meanwhile)."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.concept_id is None:
        return None
    concept = session.scalars(
        select(Concept).where(Concept.id == job.concept_id).options(*CONCEPT_LOAD)
    ).one_or_none()
    if concept is None:
        return None
    present = Presenter(request, state)
    return ConceptCreated(concept=present.concept(concept, job), job=present.job(job))


@router.get("", response_model=ConceptsPublic, responses=ERRORS)
def list_concepts(
    request: Request,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> ConceptsPublic:
    """Concepts, newest first."""
    mine = Concept.tenant_id == tenant
    total = session.scalar(select(func.count()).select_from(Concept).where(mine)) or 0
    rows = session.scalars(
        select(Concept)
        .where(mine)
        .options(*CONCEPT_LOAD)
        .order_by(Concept.created_at.desc(), Concept.id)
        .limit(limit)
        .offset(offset)
    ).all()
    learn = learn_jobs(session, [c.id for c in rows])
    present = Presenter(request, state)
    return ConceptsPublic(
        data=[present.concept(c, learn.get(c.id)) for c in rows],
        total=total,
        limit=limit,
        offset=offset,
        next=next_page(request, limit, offset, total),
    )


@router.get("/{concept_id}", response_model=ConceptPublic, responses=ERRORS)
def get_concept(
    concept_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
) -> ConceptPublic:
    """A concept: status, tokens and names, diagnostics, attention maps and input images."""
    concept = session.scalars(
        select(Concept)
        .where(Concept.id == concept_id, Concept.tenant_id == tenant)
        .options(*CONCEPT_LOAD)
    ).one_or_none()
    if concept is None:
        raise not_found("concept", concept_id)
    return Presenter(request, state).concept(
        concept, learn_jobs(session, [concept_id]).get(concept_id)
    )


@router.delete("/{concept_id}", status_code=204, responses=ERRORS)
def delete_concept(
    concept_id: uuid.UUID, session: SessionDep, state: StateDep, tenant: TenantDep
) -> Response:
    """Cancel the concept's unfinished jobs, delete its stored objects and the concept."""
    changed = submissions.delete_concept(session, state, concept_id=concept_id, tenant_id=tenant)
    state.job_changed(*changed)  # canceled, or lost their concept and its files
    return Response(status_code=204)
