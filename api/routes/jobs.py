"""Jobs: status, progress, result; cancellation; a Server-Sent Events stream of changes."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import ColumnElement, func, select

from api.deps import SessionDep, StateDep, StorageDep
from api.events import job_stream
from api.present import JOB_LOAD, Presenter
from api.problems import PROBLEM_RESPONSE, Problem, not_found
from api.schemas import JobKind, JobPublic, JobsPublic, JobStatus
from core import jobs
from core.models import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, Any]] = {
    404: PROBLEM_RESPONSE,
    409: PROBLEM_RESPONSE,
    422: PROBLEM_RESPONSE,
}


def load_job(session: SessionDep, job_id: uuid.UUID) -> Job:
    job = session.scalars(select(Job).where(Job.id == job_id).options(*JOB_LOAD)).one_or_none()
    if job is None:
        raise not_found("job", job_id)
    return job


@router.get("", response_model=JobsPublic, responses=ERRORS)
def list_jobs(
    request: Request,
    session: SessionDep,
    storage: StorageDep,
    status: Annotated[list[JobStatus] | None, Query(description="Repeat to match several.")] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    concept_id: Annotated[uuid.UUID | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobsPublic:
    """Jobs, newest first, filtered by status, kind and concept."""
    where: list[ColumnElement[bool]] = []
    if status:
        where.append(Job.status.in_(status))
    if kind:
        where.append(Job.kind == kind)
    if concept_id:
        where.append(Job.concept_id == concept_id)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(
        select(Job)
        .where(*where)
        .options(*JOB_LOAD)
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
        .offset(offset)
    ).all()
    present = Presenter(request, storage)
    nxt = None
    if offset + limit < total:
        nxt = str(request.url.include_query_params(limit=limit, offset=offset + limit))
    return JobsPublic(
        data=[present.job(j) for j in rows], total=total, limit=limit, offset=offset, next=nxt
    )


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS)
def get_job(
    job_id: uuid.UUID, request: Request, session: SessionDep, storage: StorageDep
) -> JobPublic:
    """A job: status, progress, timestamps, error, and the result once it succeeded."""
    return Presenter(request, storage).job(load_job(session, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic, responses=ERRORS)
def cancel_job(
    job_id: uuid.UUID, request: Request, session: SessionDep, storage: StorageDep
) -> JobPublic:
    """Cancel a queued job at once; ask a running one to stop (it ends as `canceled`).

    Cancelling a canceled job is a no-op; a succeeded or failed job answers 409."""
    job = load_job(session, job_id)
    try:
        jobs.request_cancel(session, job=job)
    except jobs.InvalidTransition as exc:
        raise Problem(
            409, "job_finished", "Job already finished", str(exc), field="job_id",
            fix="nothing to cancel; delete the concept to remove its results",
        ) from exc  # fmt: skip
    session.commit()
    return Presenter(request, storage).job(load_job(session, job_id))


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `status` and `progress` events, each carrying "
            "the job as JSON, until the job is succeeded, failed or canceled.",
            "content": {
                "text/event-stream": {
                    "example": 'id: 1\nevent: status\ndata: {"id": "...", "status": "running"}\n\n'
                }
            },
        },
        **ERRORS,
    },
)
def job_events(
    job_id: uuid.UUID, request: Request, session: SessionDep, state: StateDep
) -> StreamingResponse:
    """Stream every status and progress change of a job; the stream ends at a terminal state."""
    load_job(session, job_id)  # 404 before the stream starts
    return StreamingResponse(
        job_stream(request, state, job_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
