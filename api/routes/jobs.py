"""Jobs: status, progress, result; cancellation; a Server-Sent Events stream of changes;
the webhook deliveries of a job."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, selectinload
from starlette.concurrency import run_in_threadpool

from api.http.accepted import accept
from api.http.deps import BEARER_SECURITY, SessionDep, StateDep, TenantDep, authenticate
from api.http.events import job_stream
from api.http.idempotency import Idempotency, KeyHeader, fingerprint
from api.http.problems import responses
from api.http.state import AppState
from api.present import JOB_LOAD, Presenter, next_page
from api.schemas import (
    JobKind,
    JobPublic,
    JobsPublic,
    JobStatus,
    WebhookAttemptPublic,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
)
from core import queueinfo, submissions
from core.models import Concept, Job, WebhookDelivery
from core.problems import not_found

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS = responses(404, 409, 422)


def load_job(session: SessionDep, job_id: uuid.UUID, tenant: uuid.UUID, *options: Any) -> Job:
    """The tenant's job; another tenant's job is `not found`, exactly like a missing one."""
    job = session.scalars(
        select(Job).where(Job.id == job_id, Job.tenant_id == tenant).options(*options)
    ).one_or_none()
    if job is None:
        raise not_found("job", job_id)
    return job


@router.get("", response_model=JobsPublic, responses=ERRORS)
def list_jobs(
    request: Request,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    status: Annotated[list[JobStatus] | None, Query(description="Repeat to match several.")] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    concept_id: Annotated[uuid.UUID | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> JobsPublic:
    """Jobs, newest first, filtered by status, kind and concept."""
    where: list[ColumnElement[bool]] = [Job.tenant_id == tenant]
    if status:
        where.append(Job.status.in_(status))
    if kind:
        where.append(Job.kind == kind)
    if concept_id:
        where.append(Job.concept_id == concept_id)
    return jobs_page(request, session, state, where, limit, offset)


def concept_jobs_page(
    request: Request,
    session: Session,
    state: AppState,
    tenant: uuid.UUID,
    concept_id: uuid.UUID,
    kind: str,
    limit: int,
    offset: int,
) -> JobsPublic:
    """One page of a concept's jobs of `kind`, newest first; 404 for another tenant's."""
    concept = session.get(Concept, concept_id)
    if concept is None or concept.tenant_id != tenant:
        raise not_found("concept", concept_id)
    where = [Job.tenant_id == tenant, Job.concept_id == concept_id, Job.kind == kind]
    return jobs_page(request, session, state, where, limit, offset)


def jobs_page(
    request: Request,
    session: Session,
    state: AppState,
    where: list[ColumnElement[bool]],
    limit: int,
    offset: int,
) -> JobsPublic:
    """One page of the jobs matching `where`, newest first."""
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(
        select(Job)
        .where(*where)
        .options(*JOB_LOAD)
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
        .offset(offset)
    ).all()
    present = Presenter(request, state)
    nxt = next_page(request, limit, offset, total)
    spots = queueinfo.spots(session, rows, pools=present.pools)  # a few queries per page
    data = [present.job(j, spots) for j in rows]
    return JobsPublic(data=data, total=total, limit=limit, offset=offset, next=nxt)


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses=ERRORS,
    openapi_extra={"security": BEARER_SECURITY},
)
async def get_job(job_id: uuid.UUID, request: Request) -> Any:
    """A job: status, progress, timestamps, error, and the result once it succeeded."""
    # The hot path of polling clients: no dependencies to solve (it authenticates by itself,
    # and documents the bearer scheme above), and the cached body (api/http/jobcache.py) answers
    # without a thread or the database; a miss reads the row in the thread pool.
    state: AppState = request.app.state.mifo
    tenant = (await authenticate(request)).tenant_id
    base = str(request.base_url)  # download URLs in the body are absolute
    cache = state.job_cache
    cached = cache.get(job_id, base)
    if cached is not None and cached[0] == tenant:
        _, body, due = cached
        if due:
            cache.reread(job_id, lambda: _read_job(request, state, job_id, base, tenant))
        return Response(body, media_type="application/json")
    # Another tenant's job is `not found`, exactly like a missing one: known from the cache
    # when it holds the job (under any base URL), else from one read that keeps nothing.
    if cached is not None or cache.owner(job_id) not in (None, tenant):
        raise not_found("job", job_id)
    found = await _read_job(request, state, job_id, base, tenant)
    if found is None:
        raise not_found("job", job_id)
    return Response(found, media_type="application/json")


async def _read_job(
    request: Request, state: StateDep, job_id: uuid.UUID, base: str, tenant: uuid.UUID
) -> bytes | None:
    """The job's body for its owner `tenant`, kept in the cache; None: missing or another
    tenant's (then nothing is kept, and nothing is rendered)."""
    mark = state.job_cache.mark()
    found = await run_in_threadpool(_job_body, request, state, job_id, tenant)
    if found is None:
        state.job_cache.drop(job_id)  # gone: nothing cached may answer for it
        return None
    owner, body = found
    if body is None:
        return None
    state.job_cache.put(job_id, base, owner, body, mark)
    return body


def _job_body(
    request: Request, state: StateDep, job_id: uuid.UUID, tenant: uuid.UUID
) -> tuple[uuid.UUID, bytes | None] | None:
    """(owner, body), the body only for the owner `tenant`; None when the job is missing."""
    with state.sessions() as session:
        # One query while the job runs: artifacts and the concept load only once it succeeded.
        job = session.get(Job, job_id)
        if job is None:
            return None
        if job.tenant_id != tenant:
            return job.tenant_id, None
        return job.tenant_id, Presenter(request, state).job(job).model_dump_json().encode()


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic, responses=ERRORS)
def cancel_job(
    job_id: uuid.UUID,
    request: Request,
    response: Response,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Cancel a queued job at once; ask a running one to stop (it ends as `canceled` at its
    next step). A running job whose worker is gone (its lease lapsed) is canceled at once.

    Cancelling a canceled job is a no-op; a succeeded or failed job answers 409."""
    job = load_job(session, job_id, tenant)
    present = Presenter(request, state)
    idem = Idempotency.begin(
        session,
        tenant_id=tenant,
        key=idempotency_key,
        ttl=state.settings.idempotency_seconds,
        fingerprint=fingerprint("POST", request.url.path),
        render=lambda jid: present.job(load_job(session, jid, tenant)),
    )

    def cancel() -> uuid.UUID:
        submissions.cancel(session, state, job=job, attach=idem.attach)
        state.job_changed(job.id)
        return job.id

    return accept(
        request,
        response,
        idem,
        cancel,
        lambda jid: present.job(load_job(session, jid, tenant)),
        location=False,
    ).body


def _job_exists(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> None:
    """404 before the stream starts (a generator's own errors would come after the 200)."""
    load_job(session, job_id, tenant)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `status` and `progress` events, each carrying "
            "the job as JSON, until the job is succeeded, failed or canceled.",
            "content": {
                "text/event-stream": {
                    "example": 'event: status\ndata: {"id": "...", "status": "running"}\nid: 1\n\n'
                }
            },
        },
        **ERRORS,
    },
    dependencies=[Depends(_job_exists)],
)
async def job_events(
    job_id: uuid.UUID, request: Request, state: StateDep
) -> AsyncIterator[ServerSentEvent]:
    """Stream every status and progress change of a job; the stream ends at a terminal state."""
    async for event in job_stream(request, state, job_id):
        yield event


@router.get("/{job_id}/webhooks", response_model=WebhookDeliveriesPublic, responses=ERRORS)
def job_webhooks(
    job_id: uuid.UUID, session: SessionDep, tenant: TenantDep
) -> WebhookDeliveriesPublic:
    """Every webhook event of the job, oldest first, with each delivery attempt."""
    load_job(session, job_id, tenant)
    rows = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id == job_id)
        .options(selectinload(WebhookDelivery.tries))
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    ).all()
    return WebhookDeliveriesPublic(
        data=[
            WebhookDeliveryPublic(
                id=d.id,
                event=d.event,
                url=d.url,
                status=d.status,  # type: ignore[arg-type]
                next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
                created_at=d.created_at,
                attempts=[
                    WebhookAttemptPublic(
                        number=a.number,
                        status_code=a.status_code,
                        error=a.error,
                        duration_ms=a.duration_ms,
                        created_at=a.created_at,
                    )
                    for a in d.tries
                ],
            )
            for d in rows
        ]
    )
