"""Job state transitions. The only code that changes a job's status.

    queued --start--> running --finish--> succeeded | failed | canceled
    queued --cancel--> canceled          running --cancel--> (cancel_requested) --> canceled
    running --lease lapsed--> queued (again) | failed (worker_lost) | canceled
    running --worker shutting down--> queued (release)

The row is the truth; the broker message only rings for it. A running job holds a lease that
its worker renews on a heartbeat (`renew`); once it lapses, the reconciler re-queues the job
(`requeue_lapsed`). Every transition is one conditional UPDATE, so the API, a worker and the
reconciler racing on the same job cannot both win (e.g. a cancel arriving while the worker
records success). Every time here is the database's (core.clock): a host's own clock, which on
a fleet may be minutes off, never stamps or expires a lease. `attempts` counts starts and
doubles as a fencing token: an attempt that lost its lease (and so its job) can no longer
write progress or an outcome. Webhook events are queued in the same transaction as the change
they announce (core.webhooks.emit), and a learning job that ends without success takes its
pending concept with it in that transaction too (core.concepts.settle).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core import clock, concepts, kinds, webhooks
from core.models import Job, JobStatus, concept_prefix

STATUSES = tuple(JobStatus)
TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class InvalidTransition(Exception):
    """The job is in a state that does not allow the requested change."""

    def __init__(self, job: Job, action: str) -> None:
        self.job = job
        super().__init__(f"Job {job.id} is {job.status}; it cannot be {action}.")


# The progress columns as a run starts or a job waits for its next one.
_NO_PROGRESS: dict[str, Any] = dict(
    phase=None, step=None, total=None, fraction=None, eta_seconds=None, progress_losses=None
)


def create_job(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    kind: str,
    concept_id: uuid.UUID | None,
    params: dict[str, Any],
    webhook_url: str | None = None,
    webhook_events: list[str] | None = None,
) -> Job:
    kinds.get(kind)  # UnknownKind for a kind this release does not know
    job = Job(
        tenant_id=tenant_id,
        kind=kind,
        status=JobStatus.QUEUED,
        concept_id=concept_id,
        params=params,
        webhook_url=webhook_url,
        webhook_events=webhook_events,
    )
    session.add(job)
    session.flush()
    return job


@dataclass(frozen=True)
class Refused:
    """`start` ended the job instead of running it: what the worker must clean up."""

    job_id: uuid.UUID
    status: str  # canceled | failed
    output: str | None  # storage prefix a previous attempt may have half-written


def output_prefix(
    kind: str, prefix: str | None, job_id: uuid.UUID, params: dict[str, Any] | None = None
) -> str:
    """Where a job of `kind` writes, under its concept's `prefix` (a tenant's kind: where its
    `params` say): removed before a retry and after a failure (core.kinds); UnknownKind for a
    kind this release does not know."""
    return kinds.get(kind).output_folder(prefix, job_id, params)


def attempt_prefix(output: str, attempt: int) -> str:
    """Where one attempt of a job writes, inside the job's output prefix: a superseded attempt
    that still writes can never touch the files of the attempt that replaced it."""
    return f"{output}attempt-{attempt}/"


def superseded_folders(output: str, keys: list[str], *, live: int | None, newest: int) -> list[str]:
    """The attempt folders under `output`, among the object `keys` listed there, that no run
    will use again: each attempt up to `newest` (the job's attempt count when read) but the
    `live` one (running, or the one whose success was recorded; None when none is). A folder
    of an attempt newer than `newest` belongs to a run that started since, and is kept."""
    numbers = set()
    for key in keys:
        head, _, rest = key.removeprefix(output).partition("/")
        if key.startswith(output) and rest and head.startswith("attempt-"):
            number = head.removeprefix("attempt-")
            if number.isdigit():
                numbers.add(int(number))
    return [attempt_prefix(output, n) for n in sorted(numbers) if n <= newest and n != live]


def job_output(session: Session, job_id: uuid.UUID) -> str | None:
    """The job's output folder; None when it has none any more (its concept was deleted,
    with its folder)."""
    row = session.execute(
        select(Job.kind, Job.concept_id, Job.params).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return None
    kind, concept_id, params = row
    if kinds.get(kind).scope == kinds.TENANT:
        return output_prefix(kind, None, job_id, params)
    return None if concept_id is None else output_prefix(kind, concept_prefix(concept_id), job_id)


def _update(session: Session, job_id: uuid.UUID, where: Any, **values: Any) -> bool:
    values.setdefault("updated_at", clock.now(session))
    result = session.execute(
        update(Job).where(Job.id == job_id, where).values(**values),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_enqueued(session: Session, job_id: uuid.UUID) -> None:
    """Record that the broker took the job's message."""
    _update(session, job_id, Job.enqueued_at.is_(None), enqueued_at=clock.now(session))


def claim_unsent(
    session: Session, *, older_than: float, limit: int = 50
) -> list[tuple[uuid.UUID, str]]:
    """(id, kind) of queued jobs whose message was never sent and that nothing has touched for
    `older_than` seconds (the request that created a job touches it just before its commit).

    Each is claimed for `older_than` seconds by moving its `updated_at` forward in one
    conditional UPDATE, so one caller sends it; `enqueued_at` is set only once the broker took
    the message (mark_enqueued). A claim whose send failed, or whose process died before
    sending, lapses by itself and the job is claimed again."""
    cutoff = clock.before(session, older_than)
    rows = session.execute(
        select(Job.id, Job.kind, Job.updated_at)
        .where(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_(None), Job.updated_at < cutoff)
        .where(Job.kind.in_(kinds.NAMES))  # a newer release's kinds are its own to send
        .order_by(Job.updated_at)
        .limit(limit)
    ).all()
    claimed = []
    for job_id, kind, seen in rows:
        unsent = (
            (Job.status == JobStatus.QUEUED) & Job.enqueued_at.is_(None) & (Job.updated_at == seen)
        )
        if _update(session, job_id, unsent):  # _update moves updated_at to now
            claimed.append((job_id, kind))
    return claimed


# A running job without a lease was started by a worker from before leases: gone once it has
# written nothing for this long (those workers wrote progress every second).
LEGACY_SILENCE = timedelta(minutes=10)


def lapsed(now: Any) -> Any:
    """Running jobs whose worker stopped renewing their lease: it is gone (killed, crashed,
    cut off), or too slow to matter, and the job is the reconciler's to re-queue."""
    legacy = Job.lease_expires_at.is_(None) & (Job.updated_at < now - LEGACY_SILENCE)
    return (Job.status == JobStatus.RUNNING) & ((Job.lease_expires_at < now) | legacy)


def start(session: Session, *, job_id: uuid.UUID, lease_seconds: float) -> Job | Refused | None:
    """Mark a queued job running under a lease of `lease_seconds`; None when it must not run
    (gone, finished, or running elsewhere: a duplicate message), Refused when this call ended
    it (cancel requested) and its output must be removed.

    Only a queued job starts: a running job whose worker was lost is re-queued by the
    reconciler (core.reconcile) once its lease lapses, never taken over by a second message.
    """
    canceled = _update(
        session,
        job_id,
        (Job.status == JobStatus.QUEUED) & Job.cancel_requested.is_(True),
        status=JobStatus.CANCELED,
        finished_at=clock.now(session),
    )
    if canceled:
        return _refused(session, job_id, JobStatus.CANCELED)
    started = _update(
        session,
        job_id,
        Job.status == JobStatus.QUEUED,
        status=JobStatus.RUNNING,
        started_at=clock.now(session),
        lease_expires_at=clock.after(session, lease_seconds),
        attempts=Job.attempts + 1,
        **_NO_PROGRESS,
    )
    if not started:
        return None
    webhooks.emit(session, job_id, "started")
    return session.get(Job, job_id, populate_existing=True)


@dataclass(frozen=True)
class Lease:
    """What a renewal found: whether the attempt still owns the job, and whether the client
    asked it to stop."""

    owned: bool
    cancel_requested: bool


def renew(session: Session, *, job_id: uuid.UUID, attempt: int, lease_seconds: float) -> Lease:
    """Extend the lease of `attempt` (the worker's heartbeat); fenced like every write."""
    owned = _update(
        session,
        job_id,
        _mine(attempt),
        lease_expires_at=clock.after(session, lease_seconds),
        updated_at=Job.updated_at,  # a heartbeat is not a change a client could see
    )
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return Lease(owned, bool(cancel))


def release(session: Session, *, job_id: uuid.UUID, attempt: int) -> bool:
    """Put a running job back in the queue because its worker is shutting down (not the
    job's fault, so not a loss); the caller returns its message to the broker."""
    return _update(
        session,
        job_id,
        _mine(attempt) & Job.cancel_requested.is_(False),
        status=JobStatus.QUEUED,
        **_FRESH,
    )


@dataclass(frozen=True)
class Lapsed:
    """A running job whose lease lapsed, as the reconciler handled it."""

    job_id: uuid.UUID
    kind: str
    outcome: str  # requeued | failed | canceled
    output: str | None  # to remove when the job ended


def requeue_lapsed(session: Session, *, max_attempts: int, limit: int = 100) -> list[Lapsed]:
    """Running jobs whose worker stopped renewing their lease: back to the queue for the next
    attempt, or ended: canceled when a cancel was asked, failed (`worker_lost`) once
    `max_attempts` runs lost their worker. The caller commits, then sends the re-queued."""
    now = clock.now(session)
    rows = session.execute(
        select(Job.id, Job.kind, Job.attempts, Job.losses, Job.cancel_requested)
        .where(lapsed(now), Job.kind.in_(kinds.NAMES))  # a newer release's kinds are its own
        .order_by(Job.updated_at)
        .limit(limit)
    ).all()
    handled = []
    for job_id, kind, attempts, losses, cancel in rows:
        still = lapsed(now) & (Job.attempts == attempts)  # not renewed, not re-run meanwhile
        ended = {"finished_at": now, "lease_expires_at": None}
        if cancel:
            if _update(session, job_id, still, status=JobStatus.CANCELED, **ended):
                handled.append(_ended(session, job_id, kind, JobStatus.CANCELED))
        elif losses + 1 >= max_attempts:
            message = (
                f"The job's worker stopped (killed, crashed, out of memory or cut off) during "
                f"each of its {losses + 1} runs; it is not run again (MIFO_MAX_ATTEMPTS)."
            )
            failed = {"error_type": "worker_lost", "error_message": message, "losses": losses + 1}
            if _update(session, job_id, still, status=JobStatus.FAILED, **failed, **ended):
                handled.append(_ended(session, job_id, kind, JobStatus.FAILED))
        elif _update(
            session,
            job_id,
            still,
            status=JobStatus.QUEUED,
            losses=losses + 1,
            enqueued_at=None,
            **_FRESH,
        ):
            handled.append(Lapsed(job_id, kind, "requeued", None))
    return handled


def _ended(session: Session, job_id: uuid.UUID, kind: str, status: str) -> Lapsed:
    webhooks.emit(session, job_id, "completed")
    concepts.settle(session, job_id, status)
    return Lapsed(job_id, kind, status, job_output(session, job_id))


# A job between two runs: no lease, no progress of a previous attempt.
_FRESH: dict[str, Any] = dict(lease_expires_at=None, **_NO_PROGRESS)


def _sent_before(kind: str, cutoff: Any) -> Any:
    queued = (Job.kind == kind) & (Job.status == JobStatus.QUEUED)
    return queued & Job.enqueued_at.is_not(None) & (Job.enqueued_at < cutoff)


def queued_and_sent(
    session: Session, *, kind: str, older_than: float, limit: int
) -> list[uuid.UUID]:
    """Queued jobs of `kind` whose message went out over `older_than` seconds ago, oldest
    first: what the broker's queue should still hold."""
    cutoff = clock.before(session, older_than)
    return list(
        session.scalars(
            select(Job.id).where(_sent_before(kind, cutoff)).order_by(Job.created_at).limit(limit)
        )
    )


def count_queued_and_sent(session: Session, *, kind: str, older_than: float) -> int:
    cutoff = clock.before(session, older_than)
    return (
        session.scalar(select(func.count()).select_from(Job).where(_sent_before(kind, cutoff))) or 0
    )


def mark_resent(session: Session, job_id: uuid.UUID) -> None:
    """Record a re-sent message, so the same job is not re-sent again for a while."""
    _update(
        session,
        job_id,
        Job.status == JobStatus.QUEUED,
        enqueued_at=clock.now(session),
        updated_at=Job.updated_at,
    )


def _refused(session: Session, job_id: uuid.UUID, status: str) -> Refused:
    webhooks.emit(session, job_id, "completed")
    concepts.settle(session, job_id, status)
    return Refused(job_id, status, job_output(session, job_id))


def abandon(
    session: Session,
    *,
    job_id: uuid.UUID,
    error_type: str,
    message: str,
    attempt: int | None = None,
    running_for: float | None = None,
) -> bool:
    """Fail a running job whose worker can no longer record an outcome (hard time limit, a
    crash outside the runner, a job stuck past its time limit); False when it already ended
    or moved on. Fenced: only `attempt` (the run that failed), or, where the caller cannot
    know the attempt (Celery's parent process after a hard time limit), only a run that has
    been running for `running_for` seconds or more - never a newer run that took the job over."""
    if attempt is not None:
        fence = _mine(attempt)
    elif running_for is not None:
        started_before = clock.before(session, running_for)
        fence = (Job.status == JobStatus.RUNNING) & (Job.started_at <= started_before)
    else:
        raise ValueError("abandon needs the attempt or a running time to fence on")
    now = clock.now(session)
    done = _update(
        session,
        job_id,
        fence,
        status=JobStatus.FAILED,
        error_type=error_type,
        error_message=message,
        finished_at=now,
        lease_expires_at=None,
    )
    if done:
        webhooks.emit(session, job_id, "completed")
        concepts.settle(session, job_id, JobStatus.FAILED)
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
    losses: dict[str, float] | None = None,
    attempt: int | None = None,
    notify: bool = False,
) -> bool:
    """Store progress (`losses`: the step's loss terms); False when the job should stop
    (cancel requested, no longer running, or redelivered to another worker). `notify`: also
    queue a `progress` webhook event."""
    written = _update(
        session,
        job_id,
        _mine(attempt),
        phase=phase,
        step=step,
        total=total,
        fraction=fraction,
        eta_seconds=eta_seconds,
        progress_losses=losses or None,
    )
    if written and notify:
        webhooks.emit(session, job_id, "progress")
    row = session.execute(
        select(Job.status, Job.cancel_requested).where(Job.id == job_id)
    ).one_or_none()
    return (
        written and row is not None and row.status == JobStatus.RUNNING and not row.cancel_requested
    )


def is_current(session: Session, *, job_id: uuid.UUID, attempt: int) -> bool:
    """Whether `attempt` still owns the job: running, and no redelivery has taken it over."""
    return session.scalar(select(Job.id).where((Job.id == job_id) & _mine(attempt))) is not None


def _mine(attempt: int | None) -> Any:
    where = Job.status == JobStatus.RUNNING
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
    if status == JobStatus.SUCCEEDED:
        where = where & Job.cancel_requested.is_(False)
    now = clock.now(session)
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
        duration_seconds=clock.seconds_since(session, Job.started_at, started),
        eta_seconds=0.0 if status == JobStatus.SUCCEEDED else None,
        fraction=1.0 if status == JobStatus.SUCCEEDED else Job.fraction,
        lease_expires_at=None,
    )
    if done:
        webhooks.emit(session, job_id, "completed")
    return done


def request_cancel(session: Session, *, job: Job) -> str | None:
    """Cancel a queued job now, ask a running one to stop; a canceled job stays canceled.

    A running job whose lease lapsed (its worker is gone) is canceled at once too. Returns
    the storage prefix to remove once the caller committed, when the job ended here."""
    if job.status == JobStatus.CANCELED:
        return None
    if job.status in TERMINAL:
        raise InvalidTransition(job, "canceled")
    # A queued job is canceled at once; the worker skips it when the message arrives.
    now = clock.now(session)
    ended = _update(
        session,
        job.id,
        (Job.status == JobStatus.QUEUED) | lapsed(now),
        status=JobStatus.CANCELED,
        finished_at=now,
        lease_expires_at=None,
    )
    if ended:
        webhooks.emit(session, job.id, "completed")
        concepts.settle(session, job.id, JobStatus.CANCELED)
    else:  # running, or just put back in the queue: either way it must not go on
        _update(session, job.id, Job.status.in_(ACTIVE), cancel_requested=True)
    output = job_output(session, job.id) if ended else None
    session.refresh(job)
    return output


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
