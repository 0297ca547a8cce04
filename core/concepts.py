"""Concept state transitions. The only code that changes a concept's status.

    pending --its learning job succeeded--> ready
    pending --its learning job failed--> failed
    pending --its learning job canceled--> canceled

A concept is created pending with the job that learns it (core.submissions; the kinds that
make their concept are core.kinds' `makes_concept`) and follows that job's end, in the same
transaction as the job's own change: the worker readies it with the success it records
(worker.runner), and a job that ends otherwise (failed, canceled, its worker lost for good,
stuck past its time limit) settles it wherever core.jobs ends the job. Each transition is one
conditional UPDATE of a pending concept, so a concept leaves `pending` once and never comes
back to it; ready, failed and canceled are final (a failed concept is learned again as a new
one).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import kinds
from core.models import Concept, ConceptStatus, Job, JobStatus

STATUSES = tuple(ConceptStatus)
FINAL = frozenset({ConceptStatus.READY, ConceptStatus.FAILED, ConceptStatus.CANCELED})

# The status a pending concept takes when its learning job ends without success.
ENDED_WITH_JOB = {
    JobStatus.FAILED: ConceptStatus.FAILED,
    JobStatus.CANCELED: ConceptStatus.CANCELED,
}


def _update(session: Session, concept_id: uuid.UUID, status: ConceptStatus, **values: Any) -> bool:
    result = session.execute(
        update(Concept)
        .where(Concept.id == concept_id, Concept.status == ConceptStatus.PENDING)
        .values(status=status, **values),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def ready(session: Session, concept_id: uuid.UUID, *, meta: dict[str, Any], files: str) -> bool:
    """The learning job succeeded: the concept is ready, with the engine's metadata and the
    folder of the attempt that learned it. False when it was no longer pending."""
    return _update(session, concept_id, ConceptStatus.READY, meta=meta, files=files)


def settle(session: Session, job_id: uuid.UUID, status: str) -> bool:
    """A job that makes its concept ended as `status` (failed or canceled): its still-pending
    concept ends with it. False when the job makes no concept or the concept was not pending
    (or is gone)."""
    if status not in ENDED_WITH_JOB:
        raise ValueError(
            f"a concept follows its learning job only when it fails or is canceled, not {status!r}"
        )
    concept_id = session.scalar(
        select(Job.concept_id).where(Job.id == job_id, Job.kind.in_(kinds.MAKE_CONCEPTS))
    )
    if concept_id is None:
        return False
    return _update(session, concept_id, ENDED_WITH_JOB[JobStatus(status)])
