"""Prometheus metrics read from the database and the broker at scrape time.

Job counts and durations come from the job table, so every API replica reports the same
numbers and nothing is lost when a process restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import case, func, select

from core.jobs import STATUSES, count_by_kind_status
from core.kinds import NAMES as KINDS
from core.models import Job
from core.queue import QUEUES

BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)


class JobCollector:
    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        with self.state.sessions() as session:
            counts: dict[tuple[str, str], int] = {(k, str(s)): 0 for k in KINDS for s in STATUSES}
            counts.update({(k, s): n for k, s, n in count_by_kind_status(session)})
            durations = self._durations(session)
            lost = dict(
                session.execute(select(Job.kind, func.sum(Job.losses)).group_by(Job.kind)).all()
            )
        jobs = GaugeMetricFamily("mifo_jobs", "Jobs by kind and status.", labels=["kind", "status"])
        for (kind, status), n in sorted(counts.items()):
            jobs.add_metric([kind, status], n)
        yield jobs

        depth = GaugeMetricFamily(
            "mifo_queue_depth", "Messages waiting in each broker queue.", labels=["queue"]
        )
        for queue in QUEUES:
            waiting = self.state.broker.depth(queue)
            if waiting is not None:
                depth.add_metric([queue], waiting)
        yield depth

        losses = GaugeMetricFamily(
            "mifo_job_lost_runs",
            "Runs whose worker was lost (their lease lapsed), summed over the jobs on record.",
            labels=["kind"],
        )
        for kind in KINDS:
            losses.add_metric([kind], int(lost.get(kind) or 0))
        yield losses

        hist = HistogramMetricFamily(
            "mifo_job_duration_seconds",
            "Run time of finished jobs (started to finished).",
            labels=["kind", "status"],
        )
        for (kind, status), (buckets, total, _count) in sorted(durations.items()):
            hist.add_metric([kind, status], buckets, sum_value=total)
        yield hist

    def _durations(self, session: Any) -> dict[tuple[str, str], tuple[list, float, int]]:
        cols = [func.sum(case((Job.duration_seconds <= b, 1), else_=0)) for b in BUCKETS]
        rows = session.execute(
            select(Job.kind, Job.status, func.count(), func.sum(Job.duration_seconds), *cols)
            .where(Job.duration_seconds.is_not(None))
            .group_by(Job.kind, Job.status)
        )
        out = {}
        for kind, status, count, total, *cumulative in rows:
            buckets = [(str(b), int(c or 0)) for b, c in zip(BUCKETS, cumulative, strict=True)]
            buckets.append(("+Inf", int(count)))
            out[(kind, status)] = (buckets, float(total or 0.0), int(count))
        return out


def registry_for(state: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(state))  # type: ignore[arg-type]
    return registry
