"""Where a queued job stands in its queue, and an estimate of when it starts.

Counted from the job rows (the truth), not the broker. A job's queue is its kind (each kind
has its own, core.queue.JOB_TASKS), ordered by creation. The estimate assumes every job
still to run takes the mean running time of the last RECENT succeeded jobs of its kind, a
running job ends when its progress ETA says (or after that mean), and its queue has one
worker per running job of the queue (at least one): while jobs wait, every worker of the
queue is busy. It is an estimate, not a promise: jobs vary in size and workers come and go.

A batch of jobs costs a fixed number of queries (none when none is queued), not one per job.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import fmean

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from core.models import Job, JobStatus, utcnow

RECENT = 20  # succeeded jobs of a kind whose mean running time makes the estimate


@dataclass(frozen=True)
class Spot:
    """A queued job's place: `position` 1 is the next of its queue to start."""

    position: int  # 1 + queued jobs of the same queue created before it
    ahead: int  # those queued jobs plus the running jobs of the queue
    start_seconds: float | None  # estimated seconds until it starts; None: no basis yet
    start_at: datetime | None


@dataclass(frozen=True)
class _Running:
    id: uuid.UUID
    kind: str
    started_at: datetime | None
    eta_seconds: float | None
    updated_at: datetime


def spots(
    session: Session, jobs: Iterable[Job], *, now: datetime | None = None
) -> dict[uuid.UUID, Spot]:
    """The place of each queued job among `jobs` (others are left out)."""
    queued = [j for j in jobs if j.status == JobStatus.QUEUED]
    if not queued:
        return {}
    now = now or utcnow()
    kinds = sorted({j.kind for j in queued})
    places = _places(session, queued)
    running = [
        _Running(*row)
        for row in session.execute(
            select(Job.id, Job.kind, Job.started_at, Job.eta_seconds, Job.updated_at).where(
                Job.status == JobStatus.RUNNING, Job.kind.in_(kinds)
            )
        )
    ]
    means = {kind: _mean_seconds(session, kind) for kind in kinds}
    found = {}
    for job in queued:
        if job.id not in places:  # deleted meanwhile
            continue
        k, busy = places[job.id]
        # Not the job itself: one that started since it was read is not ahead of itself.
        ahead = [r for r in running if r.kind == job.kind and r.id != job.id]
        mine = [_remaining(r, means[job.kind], now) for r in ahead]
        seconds = estimate(k, mine, means[job.kind])
        found[job.id] = Spot(
            position=k + 1,
            ahead=k + busy,
            start_seconds=None if seconds is None else round(seconds, 1),
            start_at=None
            if seconds is None
            else (now + timedelta(seconds=seconds)).replace(microsecond=0),
        )
    return found


def estimate(queued_ahead: int, remaining: list[float | None], mean: float | None) -> float | None:
    """Seconds until a job with `queued_ahead` jobs before it starts: one worker per running
    job (their `remaining` seconds; at least one worker), each later job taking `mean`."""
    if any(r is None for r in remaining):
        return None
    slots = max(1, len(remaining))
    free = sorted(r for r in remaining if r is not None) + [0.0] * (slots - len(remaining))
    rounds, slot = divmod(queued_ahead, slots)
    if rounds and mean is None:
        return None
    return float(free[slot]) + rounds * (mean or 0.0)


def _places(session: Session, queued: list[Job]) -> dict[uuid.UUID, tuple[int, int]]:
    """For each of the `queued` jobs: (queued jobs of its kind before it, running jobs of its
    kind), in one statement, so that both come from one snapshot even while a job moves from
    one to the other. The rank is one window over the queued jobs up to the newest of them,
    so a page costs one scan of the queue's front, not one count per job."""
    newest = max(j.created_at for j in queued)
    order = (Job.created_at, Job.id)
    ranked = (
        select(
            Job.id.label("id"),
            Job.kind.label("kind"),
            (func.row_number().over(partition_by=Job.kind, order_by=order) - 1).label("before"),
        )
        .where(
            # The page's own jobs too: one that started since the page was read still gets
            # its place (as the old counts gave it), not none.
            (Job.status == JobStatus.QUEUED) | Job.id.in_([j.id for j in queued]),
            Job.kind.in_({j.kind for j in queued}),
            Job.created_at <= newest,
        )
        .subquery()
    )
    running = aliased(Job)
    running_count = (
        select(func.count())
        .select_from(running)
        .where(
            running.status == JobStatus.RUNNING,
            running.kind == ranked.c.kind,
            running.id != ranked.c.id,
        )
        .correlate(ranked)
        .scalar_subquery()
    )
    rows = session.execute(
        select(ranked.c.id, ranked.c.before, running_count).where(
            ranked.c.id.in_([j.id for j in queued])
        )
    )
    return {job_id: (int(q), int(r)) for job_id, q, r in rows}


def _mean_seconds(session: Session, kind: str) -> float | None:
    """The mean running time of the last RECENT succeeded jobs of `kind`; None without any."""
    durations = session.scalars(
        select(Job.duration_seconds)
        .where(
            Job.status == JobStatus.SUCCEEDED,
            Job.kind == kind,
            Job.duration_seconds.is_not(None),
        )
        .order_by(Job.created_at.desc())
        .limit(RECENT)
    ).all()
    return fmean(d for d in durations if d is not None) if durations else None


def _remaining(job: _Running, mean: float | None, now: datetime) -> float | None:
    """Seconds until a running job ends: its ETA, aged since it was written, else the mean
    less the time it has run; None when neither is known."""
    if job.eta_seconds is not None:
        return max(0.0, job.eta_seconds - (now - job.updated_at).total_seconds())
    if mean is None or job.started_at is None:
        return None
    return max(0.0, mean - (now - job.started_at).total_seconds())
