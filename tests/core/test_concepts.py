"""Concept state transitions (core.concepts) against real databases: a pending concept
follows the end of the job that learns it, once, and a concept that left `pending` stays
where it went."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from core import concepts, jobs
from core.models import Concept, ConceptStatus, JobStatus
from tests.helpers.factories import make_concept, make_job


def _status(session: Session, concept: Concept) -> str:
    session.expire_all()
    row = session.get(Concept, concept.id)
    assert row is not None
    return row.status


def test_the_statuses_and_the_ends_a_concept_follows() -> None:
    assert [str(s) for s in concepts.STATUSES] == ["pending", "ready", "failed", "canceled"]
    assert set(concepts.STATUSES) - {ConceptStatus.PENDING} == concepts.FINAL
    assert concepts.ENDED_WITH_JOB == {"failed": "failed", "canceled": "canceled"}


def test_a_pending_concept_becomes_ready_once(session: Session) -> None:
    concept = make_concept(session, status="pending")
    session.commit()
    meta = {"tokens": [{"name": "red box"}]}
    assert concepts.ready(session, concept.id, meta=meta, files="concepts/x/concept/attempt-1/")
    session.commit()
    assert _status(session, concept) == "ready"
    row = session.get(Concept, concept.id)
    assert row is not None and row.meta == meta and row.files == "concepts/x/concept/attempt-1/"
    assert not concepts.ready(session, concept.id, meta={}, files="elsewhere/")


@pytest.mark.parametrize("ended", [JobStatus.FAILED, JobStatus.CANCELED])
def test_a_learning_job_that_ends_without_success_takes_its_concept_with_it(
    session: Session, ended: JobStatus
) -> None:
    concept = make_concept(session, status="pending")
    job = make_job(session, concept, kind="learn")
    session.commit()
    assert concepts.settle(session, job.id, ended)
    session.commit()
    assert _status(session, concept) == str(ended)
    # Final: neither readied nor settled again.
    assert not concepts.ready(session, concept.id, meta={}, files="x/")
    assert not concepts.settle(session, job.id, JobStatus.CANCELED)
    assert _status(session, concept) == str(ended)


def test_a_synthesis_that_ends_leaves_its_ready_concept_as_it_is(session: Session) -> None:
    concept = make_concept(session)
    job = make_job(session, concept, kind="synthesize")
    session.commit()
    assert not concepts.settle(session, job.id, JobStatus.FAILED)
    assert _status(session, concept) == "ready"


def test_success_is_no_end_to_settle(session: Session) -> None:
    concept = make_concept(session, status="pending")
    job = make_job(session, concept, kind="learn")
    session.commit()
    with pytest.raises(ValueError, match="not 'succeeded'"):
        concepts.settle(session, job.id, "succeeded")


def test_canceling_a_queued_learning_job_cancels_its_concept(session: Session) -> None:
    concept = make_concept(session, status="pending")
    job = make_job(session, concept, kind="learn")
    session.commit()
    jobs.request_cancel(session, job=job)
    session.commit()
    assert _status(session, concept) == "canceled"


def test_a_lapsed_learning_job_that_ran_out_of_attempts_fails_its_concept(
    session: Session,
) -> None:
    concept = make_concept(session, status="pending")
    job = make_job(session, concept, kind="learn")
    session.commit()
    assert jobs.start(session, job_id=job.id, lease_seconds=-1) is not None  # lapsed at once
    session.commit()
    (lost,) = jobs.requeue_lapsed(session, max_attempts=1)
    session.commit()
    assert lost.outcome == "failed" and _status(session, concept) == "failed"
