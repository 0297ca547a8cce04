"""Retention: synthesis images past MIFO_SYNTHESIS_RETENTION_SECONDS and expired
Idempotency-Keys are removed. Run by celery beat in production (`mifo beat` sends
`mifo.maintenance` every MIFO_MAINTENANCE_INTERVAL_SECONDS) and by a loop in `mifo serve`."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from core.events import Publisher
from core.models import Artifact, Concept, IdempotencyKey, Job, utcnow
from core.settings import Settings
from core.storage import Storage, StorageError

log = logging.getLogger(__name__)

BATCH = 200


def expire_syntheses(session: Session, storage: Storage, settings: Settings) -> int:
    """Delete the files of synthesis jobs finished longer ago than the retention period."""
    if settings.synthesis_retention_seconds <= 0:
        return 0
    cutoff = utcnow() - timedelta(seconds=settings.synthesis_retention_seconds)
    rows = session.execute(
        select(Job.id, Concept.id)
        .join(Concept, Job.concept_id == Concept.id)
        .join(Artifact, Artifact.job_id == Job.id)
        .where(Job.kind == "synthesize", Job.finished_at < cutoff)
        .distinct()
        .limit(BATCH)
    ).all()
    expired = 0
    publisher = Publisher(settings.events_url if rows else None)  # status caches listen
    for job_id, concept_id in rows:
        try:
            storage.delete_prefix(f"concepts/{concept_id}/syntheses/{job_id}/")
        except StorageError as exc:  # keep the rows: the next run tries again
            log.error("could not expire the images of job %s: %s", job_id, exc)
            continue
        session.execute(delete(Artifact).where(Artifact.job_id == job_id))
        job = session.get(Job, job_id)
        if job is not None and job.result is not None:
            job.result = {**job.result, "expired_at": utcnow().isoformat()}
        session.commit()
        publisher.publish(job_id)
        expired += 1
    return expired


def expire_idempotency_keys(session: Session) -> int:
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < utcnow()))
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def run_maintenance(
    sessions: sessionmaker[Session], storage: Storage, settings: Settings
) -> dict[str, int]:
    with sessions() as session:
        return {
            "syntheses_expired": expire_syntheses(session, storage, settings),
            "idempotency_keys_expired": expire_idempotency_keys(session),
        }
