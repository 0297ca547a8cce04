"""Job state transitions. The only code that changes a job's status.

    queued --start--> running --finish--> succeeded | failed | canceled
    queued --cancel--> canceled          running --cancel--> (cancel_requested) --> canceled

Every transition is one conditional UPDATE, so the API and a worker racing on the same job
cannot both win (e.g. a cancel arriving while the worker records success). `attempts` counts
deliveries and doubles as a fencing token: a worker whose job was redelivered to another one
(its own lease ran out) can no longer write progress or an outcome. Webhook events are queued
in the same transaction as the change they announce (core.webhooks.emit).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core import webhooks
from core.models import Concept, Job, concept_prefix, utcnow

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
    session: Session,
    *,
    tenant_id: uuid.UUID,
    kind: str,
    concept_id: uuid.UUID,
    params: dict[str, Any],
    webhook_url: str | None = None,
    webhook_events: list[str] | None = None,
) -> Job:
    assert kind in KINDS
    job = Job(
        tenant_id=tenant_id, kind=kind, status="queued", concept_id=concept_id, params=params,
        webhook_url=webhook_url, webhook_events=webhook_events,
    )  # fmt: skip
    session.add(job)
    session.flush()
    return job


@dataclass(frozen=True)
class Refused:
    """`start` ended the job instead of running it: what the worker must clean up."""

    job_id: uuid.UUID
    kind: str
    status: str  # canceled | failed
    output: str | None  # storage prefix a previous attempt may have half-written


def output_prefix(kind: str, prefix: str, job_id: uuid.UUID) -> str:
    """Where a job writes: removed before a retry and after a failure."""
    if kind == "learn":
        return f"{prefix}concept/"
    return f"{prefix}syntheses/{job_id}/"


def attempt_prefix(output: str, attempt: int) -> str:
    """Where one attempt of a job writes, inside the job's output prefix: a superseded attempt
    that still writes can never touch the files of the attempt that replaced it."""
    return f"{output}attempt-{attempt}/"


def job_output(session: Session, job_id: uuid.UUID) -> str | None:
    row = session.execute(
        select(Job.kind, Concept.id).join(Concept, Job.concept_id == Concept.id)
        .where(Job.id == job_id)
    ).one_or_none()  # fmt: skip
    return None if row is None else output_prefix(row[0], concept_prefix(row[1]), job_id)


def settle_concept(session: Session, job_id: uuid.UUID, status: str) -> None:
    """A learn job that ended without success takes its still-pending concept with it."""
    concept_id = session.scalar(select(Job.concept_id).where(Job.id == job_id, Job.kind == "learn"))
    if concept_id is None:
        return
    session.execute(
        update(Concept)
        .where(Concept.id == concept_id, Concept.status == "pending")
        .values(status="failed" if status == "failed" else "canceled"),
        execution_options={"synchronize_session": False},
    )


def _update(session: Session, job_id: uuid.UUID, where: Any, **values: Any) -> bool:
    values.setdefault("updated_at", utcnow())
    result = session.execute(
        update(Job).where(Job.id == job_id, where).values(**values),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_enqueued(session: Session, job_id: uuid.UUID) -> None:
    """Record that the broker took the job's message."""
    _update(session, job_id, Job.enqueued_at.is_(None), enqueued_at=utcnow())


def claim_unsent(
    session: Session, *, older_than: float, limit: int = 50
) -> list[tuple[uuid.UUID, str]]:
    """(id, kind) of queued jobs whose message was never sent and that nothing has touched for
    `older_than` seconds (the request that created a job touches it just before its commit).

    Each is claimed for `older_than` seconds by moving its `updated_at` forward in one
    conditional UPDATE, so one caller sends it; `enqueued_at` is set only once the broker took
    the message (mark_enqueued). A claim whose send failed, or whose process died before
    sending, lapses by itself and the job is claimed again."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    rows = session.execute(
        select(Job.id, Job.kind, Job.updated_at)
        .where(Job.status == "queued", Job.enqueued_at.is_(None), Job.updated_at < cutoff)
        .order_by(Job.updated_at)
        .limit(limit)
    ).all()
    claimed = []
    for job_id, kind, seen in rows:
        unsent = (Job.status == "queued") & Job.enqueued_at.is_(None) & (Job.updated_at == seen)
        if _update(session, job_id, unsent):  # _update moves updated_at to now
            claimed.append((job_id, kind))
    return claimed


def start(session: Session, *, job_id: uuid.UUID, max_attempts: int = 3) -> Job | Refused | None:
    """Mark a job running; None when it must not run (gone or finished), Refused when this
    call ended it (cancel requested, or attempts exhausted) and its output must be removed.

    A running job may be started again: that is a redelivery after its worker was lost. After
    `max_attempts` deliveries it fails with `worker_lost` instead of running once more.
    """
    canceled = _update(
        session,
        job_id,
        Job.status.in_(ACTIVE) & Job.cancel_requested.is_(True),
        status="canceled",
        finished_at=utcnow(),
    )
    if canceled:
        return _refused(session, job_id, "canceled")
    exhausted = _update(
        session,
        job_id,
        (Job.status == "running") & (Job.attempts >= max_attempts),
        status="failed",
        error_type="worker_lost",
        error_message=f"The job's worker stopped (killed, crashed or out of memory) during "
        f"each of {max_attempts} attempts; it is not retried again.",
        finished_at=utcnow(),
    )
    if exhausted:
        return _refused(session, job_id, "failed")
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
    if not started:
        return None
    webhooks.emit(session, job_id, "started")
    return session.get(Job, job_id, populate_existing=True)


def _refused(session: Session, job_id: uuid.UUID, status: str) -> Refused:
    webhooks.emit(session, job_id, "completed")
    settle_concept(session, job_id, status)
    kind = session.scalar(select(Job.kind).where(Job.id == job_id)) or "learn"
    return Refused(job_id, kind, status, job_output(session, job_id))


def abandon(session: Session, *, job_id: uuid.UUID, error_type: str, message: str) -> bool:
    """Fail a job whose worker can no longer record an outcome (hard time limit, a crash
    outside the runner, a reaped stale job); False when it already ended or moved on."""
    attempts = session.scalar(select(Job.attempts).where(Job.id == job_id))
    if attempts is None:
        return False
    now = utcnow()
    done = _update(
        session,
        job_id,
        Job.status.in_(ACTIVE) & (Job.attempts == attempts),  # fenced: no newer delivery
        status="failed",
        error_type=error_type,
        error_message=message,
        finished_at=now,
    )
    if done:
        webhooks.emit(session, job_id, "completed")
        settle_concept(session, job_id, "failed")
    return done


def record_progress(
    session: Session,
    *,
    job_id: uuid.UUID,
    phase: str,
    step: int,
    total: int,
    fraction: float,
    eta_seconds: float | None,
    attempt: int | None = None,
    notify: bool = False,
) -> bool:
    """Store progress; False when the job should stop (cancel requested, no longer running,
    or redelivered to another worker). `notify`: also queue a `progress` webhook event."""
    written = _update(
        session,
        job_id,
        _mine(attempt),
        phase=phase,
        step=step,
        total=total,
        fraction=fraction,
        eta_seconds=eta_seconds,
    )
    if written and notify:
        webhooks.emit(session, job_id, "progress")
    row = session.execute(
        select(Job.status, Job.cancel_requested).where(Job.id == job_id)
    ).one_or_none()
    return written and row is not None and row.status == "running" and not row.cancel_requested


def is_current(session: Session, *, job_id: uuid.UUID, attempt: int) -> bool:
    """Whether `attempt` still owns the job: running, and no redelivery has taken it over."""
    return session.scalar(select(Job.id).where((Job.id == job_id) & _mine(attempt))) is not None


def _mine(attempt: int | None) -> Any:
    where = Job.status == "running"
    return where if attempt is None else where & (Job.attempts == attempt)


def finish(
    session: Session,
    *,
    job_id: uuid.UUID,
    status: str,
    result: dict[str, Any] | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
    attempt: int | None = None,
) -> bool:
    """Move a running job to a terminal state; False when someone else got there first.

    Success is refused once a cancel was requested: the client was told it would stop.
    """
    assert status in TERMINAL
    where = _mine(attempt)
    if status == "succeeded":
        where = where & Job.cancel_requested.is_(False)
    now = utcnow()
    started = session.scalar(select(Job.started_at).where(Job.id == job_id))
    done = _update(
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
    if done:
        webhooks.emit(session, job_id, "completed")
    return done


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
    if _update(session, job.id, Job.status == "queued", status="canceled", finished_at=utcnow()):
        webhooks.emit(session, job.id, "completed")
        settle_concept(session, job.id, "canceled")
    else:
        _update(session, job.id, Job.status == "running", cancel_requested=True)
    session.refresh(job)
    return job


def count_by_kind_status(session: Session) -> list[tuple[str, str, int]]:
    rows = session.execute(
        select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
    )
    return [(k, s, n) for k, s, n in rows]


def count_active(session: Session, *, tenant_id: uuid.UUID) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
        )
        or 0
    )
