"""Where a queued job stands in the queues, and an estimate of when it starts.

Counted from the job rows (the truth), not the broker. Each kind has a queue of its own
(core.kinds), ordered by creation, and `position` is the place in it. What else is
ahead of a job depends on who serves the queues (Settings.worker_pools):

- shared (`mifo serve`, the default `mifo worker`): every worker takes every queue, in turns:
  the broker hands a worker a job from the queue after the one it took from last (Redis'
  transport moves the queue it just took from to the end of its list; the file-system
  transport of the embedded broker cycles through the queues), not the oldest job of all.
  So a job `position` p of its queue starts in round p of these turns: before it, the p - 1
  jobs of its own queue and, from each other queue, one job per earlier round (as many as it
  holds, whenever they were created) plus one in round p when that queue's turn comes first
  (the round starts after the kind of the job that started last); and the running jobs of
  every kind. With several workers, each keeps its own turns, so this is the order of one;
- per-kind (workers started with `--queues learn` and `--queues synthesize`): only the jobs
  of its own kind are.

The estimate assumes one worker per running job counted (at least one), busy while jobs
wait: a running job ends when its progress ETA says (or after the mean running time of its
kind), and each job ahead takes the mean running time of the last RECENT succeeded jobs of
its kind, on the worker that frees first. Only how many jobs of each kind are ahead is read,
not their order, so the longer kind is placed first. It is an estimate, not a promise: jobs
vary in size and workers come and go.

A batch of jobs costs a fixed number of queries (none when none is queued), not one per job.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import fmean

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from core.kinds import NAMES as KIND_NAMES
from core.models import Job, JobStatus, utcnow
from core.settings import WorkerPools

RECENT = 20  # succeeded jobs of a kind whose mean running time makes the estimate


@dataclass(frozen=True)
class Spot:
    """A queued job's place: `position` 1 is the next of its queue to start."""

    position: int  # 1 + queued jobs of the same queue created before it
    ahead: int  # the queued and running jobs counted before it (see the module docstring)
    start_seconds: float | None  # estimated seconds until it starts; None: no basis yet
    start_at: datetime | None


@dataclass(frozen=True)
class _Place:
    before: dict[str, int]  # kind -> queued jobs of that kind created before it
    running: dict[str, int]  # kind -> running jobs of that kind, itself left out


@dataclass(frozen=True)
class _Running:
    id: uuid.UUID
    kind: str
    started_at: datetime | None
    eta_seconds: float | None
    updated_at: datetime


def spots(
    session: Session,
    jobs: Iterable[Job],
    *,
    pools: WorkerPools = "shared",
    now: datetime | None = None,
) -> dict[uuid.UUID, Spot]:
    """The place of each queued job among `jobs` (others are left out), its workers as
    `pools` says (Settings.worker_pools)."""
    queued = [j for j in jobs if j.status == JobStatus.QUEUED]
    if not queued:
        return {}
    now = now or utcnow()
    # The kinds whose jobs can be ahead of one of these.
    kinds = sorted({j.kind for j in queued} | (set(KIND_NAMES) if pools == "shared" else set()))
    places = _places(session, queued, kinds)
    running = [
        _Running(*row)
        for row in session.execute(
            select(Job.id, Job.kind, Job.started_at, Job.eta_seconds, Job.updated_at).where(
                Job.status == JobStatus.RUNNING, Job.kind.in_(kinds)
            )
        )
    ]
    means = {kind: _mean_seconds(session, kind) for kind in kinds}
    turns = (
        _Turns(_queued_counts(session, kinds), _last_started(running))
        if pools == "shared"
        else None
    )
    found = {}
    for job in queued:
        place = places.get(job.id)
        if place is None:  # deleted meanwhile
            continue
        counted = kinds if pools == "shared" else [job.kind]
        position = place.before[job.kind] + 1
        before = turns.ahead(job.kind, position) if turns else {job.kind: position - 1}
        # Not the job itself: one that started since it was read is not ahead of itself.
        busy = [
            _remaining(r, means[r.kind], now)
            for r in running
            if r.kind in counted and r.id != job.id
        ]
        runs = sorted(
            ((means[k], before[k]) for k in counted),
            key=lambda run: run[0] or 0.0,
            reverse=True,
        )
        seconds = estimate(busy, runs)
        found[job.id] = Spot(
            position=position,
            ahead=sum(before[k] + place.running[k] for k in counted),
            start_seconds=None if seconds is None else round(seconds, 1),
            start_at=None
            if seconds is None
            else (now + timedelta(seconds=seconds)).replace(microsecond=0),
        )
    return found


@dataclass(frozen=True)
class _Turns:
    """Shared workers' turns over the queues (see the module docstring)."""

    queued: dict[str, int]  # kind -> its queued jobs
    last: str | None  # the kind of the job that started last; None: none runs

    def order(self) -> list[str]:
        """The kinds in the order of the next round: registry order, after `last`."""
        names = list(KIND_NAMES)
        if self.last not in names:
            return names
        k = names.index(self.last) + 1
        return names[k:] + names[:k]

    def ahead(self, kind: str, position: int) -> dict[str, int]:
        """Of each kind, the queued jobs that start before the job `position` of `kind`."""
        order = self.order()
        mine = order.index(kind) if kind in order else 0
        return {
            other: position - 1
            if other == kind
            else min(self.queued.get(other, 0), position - 1 + (order.index(other) < mine))
            for other in set(self.queued) | {kind}
        }


def _queued_counts(session: Session, kinds: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(kinds, 0)
    rows = session.execute(
        select(Job.kind, func.count())
        .where(Job.status == JobStatus.QUEUED, Job.kind.in_(kinds))
        .group_by(Job.kind)
    )
    counts.update({kind: int(n) for kind, n in rows})
    return counts


def _last_started(running: Sequence[_Running]) -> str | None:
    started = [(r.started_at, r.kind) for r in running if r.started_at is not None]
    return max(started)[1] if started else None


def estimate(
    remaining: Sequence[float | None], ahead: Sequence[tuple[float | None, int]]
) -> float | None:
    """Seconds until a job starts: one worker per running job (their `remaining` seconds; at
    least one worker), and before it the `ahead` jobs, as runs of (seconds each, how many) in
    the order they start, each on the worker that frees first; None where a time is unknown."""
    if any(r is None for r in remaining):
        return None
    free = [r for r in remaining if r is not None] or [0.0]
    heapq.heapify(free)
    for seconds, count in ahead:
        if count and seconds is None:
            return None
        if count and seconds:
            free = _take(free, seconds, count)
    return float(free[0])


def _take(free: list[float], seconds: float, count: int) -> list[float]:
    """The workers' free times (a heap) once `count` jobs of `seconds` each started, each on
    the worker that frees first: one at a time while the workers free more than `seconds`
    apart; from then on the workers take them in turns, so whole rounds are counted at once
    (a long queue costs no more than a short one)."""
    last = max(free)
    while count and last - free[0] > seconds:
        last = max(last, free[0] + seconds)
        heapq.heapreplace(free, free[0] + seconds)
        count -= 1
    rounds, extra = divmod(count, len(free))
    turns = [f + (rounds + (i < extra)) * seconds for i, f in enumerate(sorted(free))]
    heapq.heapify(turns)
    return turns


def _places(session: Session, queued: list[Job], kinds: list[str]) -> dict[uuid.UUID, _Place]:
    """For each of the `queued` jobs: the queued jobs of each of `kinds` before it and their
    running jobs, in one statement, so that both come from one snapshot even while a job
    moves from one to the other. The counts before it are one window over the queued jobs up
    to the newest of them, so a page costs one scan of the queues' front, not one count per
    job."""
    newest = max(j.created_at for j in queued)
    ids = [j.id for j in queued]
    before = [
        func.count(Job.id)
        # Queued ones only: a job of the page that started since it was read is running now,
        # counted there, not here too.
        .filter((Job.kind == kind) & (Job.status == JobStatus.QUEUED))
        .over(order_by=(Job.created_at, Job.id), rows=(None, -1))  # the rows before this one
        .label(f"before_{i}")
        for i, kind in enumerate(kinds)
    ]
    ranked = (
        select(Job.id.label("id"), *before)
        .where(
            # The page's own jobs too: one that started since the page was read still gets
            # its place (as the old counts gave it), not none.
            (Job.status == JobStatus.QUEUED) | Job.id.in_(ids),
            Job.kind.in_(kinds),
            Job.created_at <= newest,
        )
        .subquery()
    )
    running = []
    for kind in kinds:
        other = aliased(Job)
        running.append(
            select(func.count())
            .select_from(other)
            .where(other.status == JobStatus.RUNNING, other.kind == kind, other.id != ranked.c.id)
            .correlate(ranked)
            .scalar_subquery()
        )
    counts = [ranked.c[f"before_{i}"] for i in range(len(kinds))]
    rows = session.execute(select(ranked.c.id, *counts, *running).where(ranked.c.id.in_(ids)))
    return {
        row[0]: _Place(
            before=dict(zip(kinds, map(int, row[1 : 1 + len(kinds)]), strict=True)),
            running=dict(zip(kinds, map(int, row[1 + len(kinds) :]), strict=True)),
        )
        for row in rows
    }


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
