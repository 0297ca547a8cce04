"""Job state transitions against PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from core import jobs
from core.models import Job

from .factories import LEASE, make_concept, make_job


def _fresh(session: Session, job: Job) -> Job:
    session.commit()
    session.expire_all()
    return session.get(Job, job.id)  # type: ignore[return-value]


def test_happy_path_records_times_progress_and_duration(session: Session) -> None:
    job = make_job(session, make_concept(session))
    started = jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    assert started is not None and started.status == "running" and started.attempts == 1
    assert jobs.record_progress(
        session, job_id=job.id, phase="phase1", step=3, total=10, fraction=0.3, eta_seconds=7.0
    )
    assert jobs.finish(session, job_id=job.id, status="succeeded", result={"ok": 1})
    job = _fresh(session, job)
    assert (job.status, job.phase, job.step, job.fraction, job.result) == (
        "succeeded", "phase1", 3, 1.0, {"ok": 1},
    )  # fmt: skip
    assert job.started_at <= job.finished_at and job.duration_seconds >= 0
    assert job.finished_at.tzinfo is not None


def test_cancel_queued_is_immediate_and_the_worker_skips_it(session: Session) -> None:
    job = make_job(session, make_concept(session))
    assert jobs.request_cancel(session, job=job).status == "canceled"
    assert jobs.start(session, job_id=job.id, lease_seconds=LEASE) is None
    assert _fresh(session, job).status == "canceled"


def test_cancel_running_asks_the_worker_and_success_is_refused(session: Session) -> None:
    job = make_job(session, make_concept(session))
    jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    job = jobs.request_cancel(session, job=job)
    assert job.status == "running" and job.cancel_requested
    # The next progress write tells the engine to stop.
    assert not jobs.record_progress(
        session, job_id=job.id, phase="phase1", step=1, total=2, fraction=0.5, eta_seconds=None
    )
    assert not jobs.finish(session, job_id=job.id, status="succeeded")
    assert jobs.finish(session, job_id=job.id, status="canceled")
    assert _fresh(session, job).status == "canceled"


def test_cancel_is_idempotent_but_finished_jobs_refuse(session: Session) -> None:
    concept = make_concept(session)
    done = make_job(session, concept, status="succeeded")
    with pytest.raises(jobs.InvalidTransition):
        jobs.request_cancel(session, job=done)
    gone = make_job(session, concept, status="canceled")
    assert jobs.request_cancel(session, job=gone).status == "canceled"


def test_redelivered_running_job_starts_again_unless_cancel_was_requested(session: Session) -> None:
    concept = make_concept(session)
    job = make_job(session, concept)
    jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    again = jobs.start(session, job_id=job.id, lease_seconds=LEASE)  # the worker was lost; the broker redelivered
    assert again is not None and again.attempts == 2
    jobs.request_cancel(session, job=again)
    refused = jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    assert isinstance(refused, jobs.Refused) and refused.status == "canceled"
    assert refused.output == jobs.output_prefix(job.kind, f"concepts/{concept.id}/", job.id)
    assert _fresh(session, job).status == "canceled"


def test_finished_jobs_are_not_started_or_finished_twice(session: Session) -> None:
    job = make_job(session, make_concept(session))
    jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    assert jobs.finish(session, job_id=job.id, status="failed", error_type="x", error_message="y")
    assert jobs.start(session, job_id=job.id, lease_seconds=LEASE) is None
    assert not jobs.finish(session, job_id=job.id, status="succeeded")
    assert _fresh(session, job).error_type == "x"


def test_counts_by_kind_and_status(session: Session) -> None:
    concept = make_concept(session)
    make_job(session, concept)
    make_job(session, concept)
    make_job(session, concept, kind="synthesize", status="failed")
    session.commit()
    assert sorted(jobs.count_by_kind_status(session)) == [
        ("learn", "queued", 2), ("synthesize", "failed", 1),
    ]  # fmt: skip
