"""Job state transitions. The only code that changes a job's status.

    queued --start--> running --finish--> succeeded | failed | canceled
    queued --cancel--> canceled          running --cancel--> (cancel_requested) --> canceled

Every transition is one conditional UPDATE, so the API and a worker racing on the same job
cannot both win (e.g. a cancel arriving while the worker records success).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.models import Job, utcnow

KINDS = ("learn", "synthesize")
STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
ACTIVE = frozenset({"queued", "running"})


class InvalidTransition(Exception):
    """The job is in a state that does not allow the requested change."""

    def __init__(self, job: Job, action: str) -> None:
        self.job = job
        super().__init__(f"Job {job.id} is {job.status}; it cannot be {action}.")


def create_job(
    session: Session, *, kind: str, concept_id: uuid.UUID, params: dict[str, Any]
) -> Job:
    assert kind in KINDS
    job = Job(kind=kind, status="queued", concept_id=concept_id, params=params)
    session.add(job)
    session.flush()
    return job


def _update(session: Session, job_id: uuid.UUID, where: Any, **values: Any) -> bool:
    values.setdefault("updated_at", utcnow())
    result = session.execute(
        update(Job).where(Job.id == job_id, where).values(**values),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def start(session: Session, *, job_id: uuid.UUID) -> Job | None:
    """Mark a job running; None when it must not run (gone, finished, or cancel requested).

    A running job may be started again: that is a redelivery after its worker was lost.
    """
    canceled = _update(
        session,
        job_id,
        Job.status.in_(ACTIVE) & Job.cancel_requested.is_(True),
        status="canceled",
        finished_at=utcnow(),
    )
    if canceled:
        return None
    started = _update(
        session,
        job_id,
        Job.status.in_(ACTIVE),
        status="running",
        started_at=utcnow(),
        attempts=Job.attempts + 1,
        phase=None,
        step=None,
        total=None,
        fraction=None,
        eta_seconds=None,
    )
    return session.get(Job, job_id, populate_existing=True) if started else None


def record_progress(
    session: Session,
    *,
    job_id: uuid.UUID,
    phase: str,
    step: int,
    total: int,
    fraction: float,
    eta_seconds: float | None,
) -> bool:
    """Store progress; False when the job should stop (cancel requested, or no longer running)."""
    _update(
        session,
        job_id,
        Job.status == "running",
        phase=phase,
        step=step,
        total=total,
        fraction=fraction,
        eta_seconds=eta_seconds,
    )
    row = session.execute(
        select(Job.status, Job.cancel_requested).where(Job.id == job_id)
    ).one_or_none()
    return row is not None and row.status == "running" and not row.cancel_requested


def finish(
    session: Session,
    *,
    job_id: uuid.UUID,
    status: str,
    result: dict[str, Any] | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Move a running job to a terminal state; False when someone else got there first.

    Success is refused once a cancel was requested: the client was told it would stop.
    """
    assert status in TERMINAL
    where = Job.status == "running"
    if status == "succeeded":
        where = where & Job.cancel_requested.is_(False)
    now = utcnow()
    started = session.scalar(select(Job.started_at).where(Job.id == job_id))
    return _update(
        session,
        job_id,
        where,
        status=status,
        result=result,
        error_type=error_type,
        error_message=error_message,
        finished_at=now,
        duration_seconds=_seconds(started, now),
        eta_seconds=0.0 if status == "succeeded" else None,
        fraction=1.0 if status == "succeeded" else Job.fraction,
    )


def _seconds(start: datetime | None, end: datetime) -> float | None:
    if start is None:
        return None
    return (end - start).total_seconds()


def request_cancel(session: Session, *, job: Job) -> Job:
    """Cancel a queued job now, ask a running one to stop; a canceled job stays canceled."""
    if job.status == "canceled":
        return job
    if job.status in TERMINAL:
        raise InvalidTransition(job, "canceled")
    # A queued job is canceled at once; the worker skips it when the message arrives.
    if not _update(
        session, job.id, Job.status == "queued", status="canceled", finished_at=utcnow()
    ):
        _update(session, job.id, Job.status == "running", cancel_requested=True)
    session.refresh(job)
    return job


def count_by_kind_status(session: Session) -> list[tuple[str, str, int]]:
    rows = session.execute(
        select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
    )
    return [(k, s, n) for k, s, n in rows]
