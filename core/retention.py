"""Retention and maintenance: synthesis images and evaluation files past
MIFO_SYNTHESIS_RETENTION_SECONDS, segmentation images (with their masks) unused for
MIFO_SEGMENTATION_RETENTION_SECONDS and expired Idempotency-Keys are removed; jobs still running MIFO_STALE_JOB_GRACE_SECONDS past
their time limit fail as `timeout` (a worker stuck inside one step, whose heartbeat still
renews the lease); storage prefixes whose removal failed earlier are tried again
(core/cleanup.py). One of the periodic duties (core.duties), every
MIFO_MAINTENANCE_INTERVAL_SECONDS. Workers that are gone are the reconciler's (core.reconcile)."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from core import cleanup, clock, jobs, kinds
from core.events import Publisher
from core.models import (
    Artifact,
    Concept,
    IdempotencyKey,
    Job,
    SegmentImage,
    concept_prefix,
    segment_image_prefix,
    utcnow,
)
from core.settings import Settings
from core.storage import Storage, StorageError

log = logging.getLogger(__name__)

BATCH = 200


# The kinds whose files MIFO_SYNTHESIS_RETENTION_SECONDS expires: images made from a concept.
EXPIRING = (kinds.SYNTHESIZE, kinds.EVALUATE)


def expire_syntheses(session: Session, storage: Storage, settings: Settings) -> int:
    """Delete the files of synthesis and evaluation jobs finished longer ago than the
    retention period (the job stays, its result marked `expired_at`)."""
    if settings.synthesis_retention_seconds <= 0:
        return 0
    cutoff = utcnow() - timedelta(seconds=settings.synthesis_retention_seconds)
    rows = session.execute(
        select(Job.id, Job.kind, Concept.id)
        .join(Concept, Job.concept_id == Concept.id)
        .join(Artifact, Artifact.job_id == Job.id)
        .where(Job.kind.in_([kind.name for kind in EXPIRING]), Job.finished_at < cutoff)
        .distinct()
        .limit(BATCH)
    ).all()
    expired = 0
    publisher = Publisher(settings.events_url if rows else None)  # status caches listen
    for job_id, kind, concept_id in rows:
        try:
            storage.delete_prefix(kinds.get(kind).output_folder(concept_prefix(concept_id), job_id))
        except StorageError as exc:  # keep the rows: the next run tries again
            log.error("could not expire the files of job %s: %s", job_id, exc)
            continue
        session.execute(delete(Artifact).where(Artifact.job_id == job_id))
        job = session.get(Job, job_id)
        if job is not None and job.result is not None:
            job.result = {**job.result, "expired_at": utcnow().isoformat()}
        session.commit()
        publisher.publish(job_id)
        expired += 1
    return expired


def expire_segmentations(session: Session, storage: Storage, settings: Settings) -> int:
    """Delete the segmentation images last used longer ago than the retention period, with
    every mask made on them (their artifact rows go with the image's row, their files with
    its folder); an image a queued or running segmentation names is kept. How many went."""
    if settings.segmentation_retention_seconds <= 0:
        return 0
    cutoff = clock.before(session, settings.segmentation_retention_seconds)
    stale = session.scalars(
        select(SegmentImage.id).where(SegmentImage.last_used_at < cutoff).limit(BATCH)
    ).all()
    if not stale:
        return 0
    busy = {
        str(params.get("image_id"))
        for params in session.scalars(
            select(Job.params).where(Job.kind == kinds.SEGMENT.name, Job.status.in_(jobs.ACTIVE))
        )
    }
    publisher = Publisher(settings.events_url)  # status caches listen
    expired = 0
    for image_id in (i for i in stale if str(i) not in busy):
        made = _expire_image(session, image_id, cutoff)
        if made is None:  # used again meanwhile: kept
            continue
        expired += 1
        for job_id in made:
            publisher.publish(job_id)
        prefix = segment_image_prefix(image_id)
        try:
            storage.delete_prefix(prefix)
        except StorageError as exc:  # no row points there any more: maintenance tries again
            log.error("could not remove segmentation image %s: %s", image_id, exc)
            cleanup.defer(session, prefix, str(exc))
    return expired


def _expire_image(
    session: Session, image_id: uuid.UUID, cutoff: datetime
) -> list[uuid.UUID] | None:
    """Delete the image's row (its artifacts go with it) unless it was used since `cutoff`,
    and mark the results of the segmentations that made them expired; those jobs, or None
    when the image was kept. Rows first: no answer names a file that is gone."""
    made = [
        job_id
        for job_id in session.scalars(
            select(Artifact.job_id).where(Artifact.image_id == image_id).distinct()
        )
        if job_id is not None
    ]
    gone = session.execute(
        delete(SegmentImage).where(SegmentImage.id == image_id, SegmentImage.last_used_at < cutoff)
    )
    if not gone.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        return None
    now = utcnow().isoformat()
    for job in session.scalars(select(Job).where(Job.id.in_(made))):
        if job.result is not None:
            job.result = {**job.result, "expired_at": now}
    session.commit()
    return made


def expire_idempotency_keys(session: Session) -> int:
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < utcnow()))
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def reap_stale_jobs(session: Session, storage: Storage, settings: Settings) -> int:
    """Fail jobs running far past their time limit (stuck inside one step) and remove their
    half-written output, so they stop holding the tenant's active-job slots."""
    reaped = 0
    publisher = Publisher(settings.events_url)
    for kind in kinds.NAMES:
        silent = settings.time_limit(kind) + settings.stale_job_grace_seconds
        cutoff = clock.before(session, silent)
        ids = session.scalars(
            select(Job.id)
            .where(Job.kind == kind, Job.status == "running", Job.started_at < cutoff)
            .limit(BATCH)
        ).all()
        for job_id in ids:
            output = jobs.job_output(session, job_id)
            message = (
                f"The job was still running {silent:g} s after it started (its time limit "
                "plus MIFO_STALE_JOB_GRACE_SECONDS); it was stopped and its output removed."
            )
            stuck = jobs.abandon(
                session, job_id=job_id, error_type="timeout", message=message, running_for=silent
            )
            if not stuck:
                session.rollback()
                continue
            session.commit()
            reaped += 1
            publisher.publish(job_id)
            if not output:
                continue
            try:
                storage.delete_prefix(output)
            except StorageError as exc:  # no artifact row points there: try again later
                log.error("could not remove the output of stale job %s: %s", job_id, exc)
                cleanup.defer(session, output, str(exc))
    return reaped


# How far back the sweep of superseded attempts looks: a run that lost its job writes at most
# one more object before its next fence check stops it, and then removes its own folder; only
# a run killed in between leaves files behind, soon after its job moved on.
SWEEP_WINDOW_SECONDS = 24 * 3600


def sweep_superseded(session: Session, storage: Storage) -> int:
    """Remove what attempts that lost their job left in storage (never listed: no artifact
    row points there); how many attempt folders were removed. Candidates are the jobs of the
    last SWEEP_WINDOW_SECONDS that ran more than once or ended without success."""
    unsuccessful = Job.status.in_(("failed", "canceled")) & (Job.attempts >= 1)
    rows = session.execute(
        select(Job.id, Job.kind, Job.status, Job.attempts, Job.concept_id, Job.params)
        .where(
            (Job.attempts > 1) | unsuccessful,
            Job.kind.in_(kinds.NAMES),  # only kinds whose output folder this release knows
            Job.updated_at >= clock.before(session, SWEEP_WINDOW_SECONDS),
        )
        .order_by(Job.updated_at.desc())
    ).all()
    session.rollback()  # no transaction held open while storage is listed
    removed = 0
    for job_id, kind, status, attempts, concept_id, params in rows:
        if kinds.get(kind).scope == kinds.TENANT:  # no concept: its params name its folder
            output = jobs.output_prefix(kind, None, job_id, params)
        elif concept_id is None:  # its concept was deleted, with its folder
            continue
        else:
            output = jobs.output_prefix(kind, concept_prefix(concept_id), job_id)
        live = attempts if status in ("running", "succeeded") else None
        try:
            removed += cleanup.remove_superseded(storage, output, live=live, newest=attempts)
        except StorageError as exc:  # the next pass tries again
            log.error("could not sweep the output of job %s: %s", job_id, exc)
    if removed:
        log.info("removed %d folder(s) of superseded attempts", removed)
    return removed


def run_maintenance(
    sessions: sessionmaker[Session], storage: Storage, settings: Settings
) -> dict[str, int]:
    with sessions() as session:
        return {
            "syntheses_expired": expire_syntheses(session, storage, settings),
            "segmentations_expired": expire_segmentations(session, storage, settings),
            "idempotency_keys_expired": expire_idempotency_keys(session),
            "stale_jobs_failed": reap_stale_jobs(session, storage, settings),
            "storage_cleanups_done": cleanup.retry(session, storage),
            "superseded_attempts_removed": sweep_superseded(session, storage),
        }
