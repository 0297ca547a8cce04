"""Job state transitions against PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from core import jobs
from core.models import Job
from tests.helpers.factories import LEASE, lose_worker, make_concept, make_job


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
        "succeeded",
        "phase1",
        3,
        1.0,
        {"ok": 1},
    )
    assert job.started_at <= job.finished_at and job.duration_seconds >= 0
    assert job.finished_at.tzinfo is not None


def test_cancel_queued_is_immediate_and_the_worker_skips_it(session: Session) -> None:
    job = make_job(session, make_concept(session))
    jobs.request_cancel(session, job=job)
    assert job.status == "canceled"
    assert jobs.start(session, job_id=job.id, lease_seconds=LEASE) is None
    assert _fresh(session, job).status == "canceled"


def test_cancel_running_asks_the_worker_and_success_is_refused(session: Session) -> None:
    job = make_job(session, make_concept(session))
    jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    assert jobs.request_cancel(session, job=job) is None  # nothing ended here: nothing to remove
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
    assert jobs.request_cancel(session, job=gone) is None and gone.status == "canceled"


def test_only_a_queued_job_starts_and_a_requeued_one_is_the_next_attempt(
    session: Session,
) -> None:
    concept = make_concept(session)
    job = make_job(session, concept)
    assert jobs.start(session, job_id=job.id, lease_seconds=LEASE).attempts == 1  # type: ignore[union-attr]
    assert jobs.start(session, job_id=job.id, lease_seconds=LEASE) is None  # a second message
    lose_worker(session, job.id)
    again = jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    assert again is not None and again.attempts == 2 and again.losses == 1


def test_cancel_requested_before_a_queued_start_ends_the_job(session: Session) -> None:
    concept = make_concept(session)
    job = make_job(session, concept)
    job.cancel_requested = True  # a cancel that raced with a re-queue
    session.flush()
    refused = jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    assert isinstance(refused, jobs.Refused) and refused.status == "canceled"
    assert refused.output == jobs.output_prefix(job.kind, f"concepts/{concept.id}/", job.id)
    assert _fresh(session, job).status == "canceled"


def test_a_worker_shutting_down_puts_the_job_back(session: Session) -> None:
    job = make_job(session, make_concept(session))
    jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    assert not jobs.release(session, job_id=job.id, attempt=2)  # not that attempt's to release
    assert jobs.release(session, job_id=job.id, attempt=1)
    fresh = _fresh(session, job)
    assert fresh.status == "queued" and fresh.lease_expires_at is None and fresh.losses == 0
    assert jobs.start(session, job_id=job.id, lease_seconds=LEASE).attempts == 2  # type: ignore[union-attr]


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
        ("learn", "queued", 2),
        ("synthesize", "failed", 1),
    ]
