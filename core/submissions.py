"""Submitting jobs: the one place that turns an accepted request into rows, objects and a
message.

Each function owns its transaction, the lock order every route keeps (tenant, then concept,
then job: see `lock_tenant`), the retry of a transaction that collided with another one,
the clean-up when something fails (nothing half-written stays behind) and the dispatch to the
broker. The routes parse the request before and present the job after.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core import cleanup, clock, images, jobs, kinds, webhooks
from core.db import retry_conflicts
from core.models import (
    Artifact,
    Concept,
    ConceptStatus,
    Job,
    SegmentImage,
    Tenant,
    concept_prefix,
    segment_image_prefix,
)
from core.problems import Problem, not_found, unavailable
from core.queue import Broker
from core.settings import Settings
from core.storage import Storage, StorageError

log = logging.getLogger(__name__)

Attach = Callable[[uuid.UUID], None]  # records the new job with the request's idempotency key


class Context(Protocol):
    """What a submission needs of the process it runs in (api.http.state.AppState)."""

    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    broker: Broker

    def creating_job(self) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class LearnInputs:
    """A learning request once parsed and checked (api/checks/uploads.py)."""

    image: bytes
    masks: list[bytes]
    names: list[str] | None
    options: dict[str, Any]
    mask_threshold: float
    width: int
    height: int


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> None:
    """The first lock of every transaction that takes several (tenant, then concept, then
    job). NO KEY UPDATE: the foreign-key checks of rows written meanwhile (jobs, webhook
    deliveries) do not wait for it, so they cannot close a cycle with it."""
    session.get(Tenant, tenant_id, with_for_update={"key_share": True})


def check_capacity(session: Session, tenant_id: uuid.UUID, settings: Settings) -> None:
    """429 when the tenant already has MIFO_MAX_ACTIVE_JOBS queued or running jobs. The
    tenant row stays locked (PostgreSQL) until the caller commits, so that concurrent
    requests of one tenant count one after the other."""
    lock_tenant(session, tenant_id)
    active = jobs.count_active(session, tenant_id=tenant_id)
    if active >= settings.max_active_jobs:
        raise Problem(
            "too_many_active_jobs",
            f"This tenant has {active} queued or running jobs; the limit is "
            f"{settings.max_active_jobs}.",
            field="tenant",
            fix="wait for a job to finish or cancel one (MIFO_MAX_ACTIVE_JOBS on the server)",
            headers={"Retry-After": "10"},
        )


def learn(
    session: Session,
    ctx: Context,
    *,
    tenant_id: uuid.UUID,
    inputs: LearnInputs,
    hook: webhooks.Hook,
    attach: Attach,
) -> uuid.UUID:
    """Store the inputs, create the concept and its learning job, send it; the job's id."""

    def accept() -> tuple[uuid.UUID, uuid.UUID]:
        # 0. Files stored ahead of the commit are removed later unless the commit happens.
        concept_id = uuid.uuid4()
        cleanup.pending(ctx.sessions, concept_prefix(concept_id))
        # 1. Capacity, counted under the tenant's lock until the commit.
        with ctx.creating_job():
            check_capacity(session, tenant_id, ctx.settings)
            # 2. The concept and its job, with the idempotency key in the same transaction.
            concept = _new_concept(session, ctx.settings, tenant_id, inputs, concept_id)
            job = jobs.create_job(
                session,
                tenant_id=tenant_id,
                kind=kinds.LEARN.name,
                concept_id=concept.id,
                params={"options": inputs.options},
                webhook_url=hook.url,
                webhook_events=hook.events,
            )
            attach(job.id)
            # 3. The inputs, stored before the commit: a failure leaves no row behind.
            try:
                _store_inputs(session, ctx.storage, concept, inputs)
                job.updated_at = clock.now(session)  # the reconciler's re-send grace starts now
                cleanup.settle(session, concept.prefix)
                session.commit()
            except Exception as exc:
                session.rollback()
                # A lost connection may have lost only the commit's answer: the record made
                # before storing (step 0) removes the files later unless the row exists.
                if not isinstance(exc, OperationalError):
                    cleanup.remove(ctx.storage, ctx.sessions, concept.prefix, "rejected inputs")
                if isinstance(exc, StorageError):
                    raise unavailable("storage", exc) from exc
                raise
            return concept.id, job.id

    concept_id, job_id = retry_conflicts(session, accept)
    # 4. The message; a broker that is down takes the request back.
    _dispatch(session, ctx, job_id, kinds.LEARN.name, concept_id=concept_id)
    return job_id


def synthesize(
    session: Session,
    ctx: Context,
    *,
    tenant_id: uuid.UUID,
    concept_id: uuid.UUID,
    params: dict[str, Any],
    hook: webhooks.Hook,
    attach: Attach,
) -> uuid.UUID:
    """Create a synthesis job for a ready concept and send it; the job's id."""
    return on_concept(
        session,
        ctx,
        kinds.SYNTHESIZE,
        tenant_id=tenant_id,
        concept_id=concept_id,
        params=params,
        hook=hook,
        attach=attach,
    )


def evaluate(
    session: Session,
    ctx: Context,
    *,
    tenant_id: uuid.UUID,
    concept_id: uuid.UUID,
    params: dict[str, Any],
    hook: webhooks.Hook,
    attach: Attach,
) -> uuid.UUID:
    """Create an evaluation job for a ready concept and send it; the job's id."""
    return on_concept(
        session,
        ctx,
        kinds.EVALUATE,
        tenant_id=tenant_id,
        concept_id=concept_id,
        params=params,
        hook=hook,
        attach=attach,
    )


def on_concept(
    session: Session,
    ctx: Context,
    kind: kinds.Kind,
    *,
    tenant_id: uuid.UUID,
    concept_id: uuid.UUID,
    params: dict[str, Any],
    hook: webhooks.Hook,
    attach: Attach,
) -> uuid.UUID:
    """Create a job of `kind` on a ready concept (kept from deletion meanwhile) under the
    tenant's capacity, and send it; the job's id."""

    def accept() -> uuid.UUID:
        with ctx.creating_job():
            check_capacity(session, tenant_id, ctx.settings)
            _keep_concept(session, concept_id, tenant_id)
            try:
                job = jobs.create_job(
                    session,
                    tenant_id=tenant_id,
                    kind=kind.name,
                    concept_id=concept_id,
                    params=params,
                    webhook_url=hook.url,
                    webhook_events=hook.events,
                )
                attach(job.id)
                session.commit()
            except IntegrityError as exc:  # the concept was deleted after all (SQLite: no lock)
                session.rollback()
                if session.scalar(select(Concept.id).where(Concept.id == concept_id)) is None:
                    raise not_found("concept", concept_id) from exc
                raise
            return job.id

    job_id = retry_conflicts(session, accept)
    _dispatch(session, ctx, job_id, kind.name)
    return job_id


@dataclass(frozen=True)
class SegmentInputs:
    """A segmentation request once parsed and checked (api/checks/segmentations.py)."""

    image: bytes | None  # a new image, as PNG; None: `image_id` names one stored already
    image_id: uuid.UUID | None
    width: int
    height: int
    params: dict[str, Any]  # what the worker runs with: mode, prompts or options


def segment(
    session: Session,
    ctx: Context,
    *,
    tenant_id: uuid.UUID,
    inputs: SegmentInputs,
    attach: Attach,
) -> uuid.UUID:
    """Store a new image (or mark a stored one used), create the segmentation job, send it;
    the job's id. It belongs to the tenant: no concept."""

    def accept() -> uuid.UUID:
        image_id = inputs.image_id or uuid.uuid4()
        prefix = segment_image_prefix(image_id)
        if inputs.image is not None:  # removed later unless the commit happens
            cleanup.pending(ctx.sessions, prefix)
        with ctx.creating_job():
            check_capacity(session, tenant_id, ctx.settings)
            _use_image(session, ctx.settings, tenant_id, image_id, inputs)
            job = jobs.create_job(
                session,
                tenant_id=tenant_id,
                kind=kinds.SEGMENT.name,
                concept_id=None,
                params={**inputs.params, "image_id": str(image_id)},
            )
            attach(job.id)
            try:
                if inputs.image is not None:
                    ctx.storage.put(f"{prefix}image.png", inputs.image, "image/png")
                    cleanup.settle(session, prefix)
                job.updated_at = clock.now(session)  # the reconciler's re-send grace starts now
                session.commit()
            except Exception as exc:
                session.rollback()
                if inputs.image is not None and not isinstance(exc, OperationalError):
                    cleanup.remove(ctx.storage, ctx.sessions, prefix, "a rejected image")
                if isinstance(exc, StorageError):
                    raise unavailable("storage", exc) from exc
                raise
            return job.id

    job_id = retry_conflicts(session, accept)
    _dispatch(session, ctx, job_id, kinds.SEGMENT.name)
    return job_id


def _use_image(
    session: Session,
    settings: Settings,
    tenant_id: uuid.UUID,
    image_id: uuid.UUID,
    inputs: SegmentInputs,
) -> None:
    """Add the new image's row, or mark the stored one used now (its retention starts
    again); 404 naming `image_id` when the tenant has no such image (any more)."""
    if inputs.image is not None:
        session.add(
            SegmentImage(id=image_id, tenant_id=tenant_id, width=inputs.width, height=inputs.height)
        )
        session.flush()
        return
    touched = session.execute(
        update(SegmentImage)
        .where(SegmentImage.id == image_id, SegmentImage.tenant_id == tenant_id)
        .values(last_used_at=clock.now(session)),
        execution_options={"synchronize_session": False},
    )
    if not touched.rowcount:  # type: ignore[attr-defined]
        raise unknown_image(image_id, settings)


def unknown_image(image_id: object, settings: Settings) -> Problem:
    """404 for an `image_id` the tenant has no image of: never sent, or removed since."""
    return Problem(
        "not_found",
        f"No segmentation image with id {image_id}.",
        field="image_id",
        fix="send the image again as `image` (its answer gives the new image_id); an image is "
        f"kept {settings.segmentation_retention_seconds} s after its last use "
        "(MIFO_SEGMENTATION_RETENTION_SECONDS)",
    )


def ready_concept(
    session: Session,
    concept_id: uuid.UUID,
    tenant_id: uuid.UUID,
    base_model: str | None,
    *,
    to: str = "synthesise",
) -> Concept:
    """The tenant's concept, ready to `to` (synthesise, export) on this server's
    `base_model` (None: any) - 404, 409 otherwise."""
    concept = session.get(Concept, concept_id)
    if concept is None or concept.tenant_id != tenant_id:
        raise not_found("concept", concept_id)
    if base_model is not None and concept.base_model != base_model:
        raise Problem(
            "base_model_mismatch",
            f"Concept {concept_id} was learned on {concept.base_model!r}; this server "
            f"synthesises with {base_model!r}.",
            field="concept_id",
            fix="learn the concept again here, or synthesise on a server with its base model "
            "(MIFO_BASE_MODEL)",
        )
    if concept.status != ConceptStatus.READY or concept.meta is None:
        raise Problem(
            "concept_not_ready",
            f"Concept {concept_id} is {concept.status}; it must be ready to {to}.",
            field="concept_id",
            status_of_concept=concept.status,
            fix=f"wait for its learning job to succeed (GET /v1/jobs/{{id}}), then {to} it; "
            "a failed concept must be learned again",
        )
    return concept


def delete_concept(
    session: Session, ctx: Context, *, concept_id: uuid.UUID, tenant_id: uuid.UUID
) -> list[uuid.UUID]:
    """Cancel the concept's unfinished jobs, delete it, then its objects; the jobs changed."""

    def delete_rows() -> tuple[str, list[uuid.UUID]]:
        lock_tenant(session, tenant_id)
        concept = session.get(Concept, concept_id, with_for_update=True)
        if concept is None or concept.tenant_id != tenant_id:
            raise not_found("concept", concept_id)
        active = session.scalars(
            select(Job).where(Job.concept_id == concept_id, Job.status.in_(jobs.ACTIVE))
        ).all()
        for job in active:  # their outputs lie under the concept's prefix, removed below
            jobs.request_cancel(session, job=job)
        changed = list(session.scalars(select(Job.id).where(Job.concept_id == concept_id)))
        prefix = concept.prefix
        session.delete(concept)
        session.commit()
        return prefix, changed

    prefix, changed = retry_conflicts(session, delete_rows)
    # The rows are gone; objects that cannot be removed now are removed by maintenance.
    cleanup.remove(ctx.storage, ctx.sessions, prefix, f"the objects of concept {concept_id}")
    return changed


def cancel(session: Session, ctx: Context, *, job: Job, attach: Attach) -> None:
    """Cancel a queued job (or one whose worker is gone) at once, ask a running one to stop;
    409 for a job that already succeeded or failed."""

    def cancel_rows() -> str | None:
        lock_tenant(session, job.tenant_id)  # the lock order of every route: tenant first
        try:
            leftover = jobs.request_cancel(session, job=job)
        except jobs.InvalidTransition as exc:
            raise Problem(
                "job_finished",
                str(exc),
                field="job_id",
                fix="nothing to cancel; delete the concept to remove its results",
            ) from exc
        attach(job.id)
        session.commit()
        return leftover

    leftover = retry_conflicts(session, cancel_rows)
    if leftover:  # its worker was gone: what it had written goes now
        cleanup.remove(ctx.storage, ctx.sessions, leftover, f"the output of job {job.id}")


def _new_concept(
    session: Session,
    settings: Settings,
    tenant_id: uuid.UUID,
    inputs: LearnInputs,
    concept_id: uuid.UUID,
) -> Concept:
    concept = Concept(
        id=concept_id,
        tenant_id=tenant_id,
        status=ConceptStatus.PENDING,
        base_model=settings.base_model,
        names=inputs.names or [f"asset{i}" for i in range(len(inputs.masks))],
        options=inputs.options,
        width=inputs.width,
        height=inputs.height,
    )
    session.add(concept)
    session.flush()
    return concept


def _keep_concept(session: Session, concept_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
    """404 when the concept was deleted since it was read; on PostgreSQL, a share lock keeps
    it until the job is committed (a concurrent DELETE waits, then cancels the new job)."""
    kept = session.scalar(
        select(Concept.id)
        .where(Concept.id == concept_id, Concept.tenant_id == tenant_id)
        .with_for_update(read=True)
    )
    if kept is None:
        raise not_found("concept", concept_id)


def _dispatch(
    session: Session,
    ctx: Context,
    job_id: uuid.UUID,
    kind: str,
    *,
    concept_id: uuid.UUID | None = None,
) -> None:
    """Send the job's message and record that it went. A broker that refuses takes the
    request back: the job (and the concept created with it) is deleted, its objects go."""
    try:
        ctx.broker.send(job_id, kind)
    except Exception as exc:
        log.error("could not queue job %s: %s", job_id, exc)
        _forget(session, ctx, job_id, concept_id)
        raise unavailable("broker", exc) from exc
    try:
        jobs.mark_enqueued(session, job_id)
        session.commit()
    except SQLAlchemyError as exc:  # sent all the same; the reconciler may send it once more
        session.rollback()
        log.warning("job %s was sent but not marked as sent: %s", job_id, exc)


def _forget(
    session: Session, ctx: Context, job_id: uuid.UUID, concept_id: uuid.UUID | None
) -> None:
    session.rollback()
    session.execute(delete(Job).where(Job.id == job_id))
    if concept_id is not None:
        session.execute(delete(Concept).where(Concept.id == concept_id))
    session.commit()
    if concept_id is not None:
        prefix = Concept(id=concept_id).prefix
        cleanup.remove(ctx.storage, ctx.sessions, prefix, f"the inputs of unqueued job {job_id}")


def _store_inputs(
    session: Session, storage: Storage, concept: Concept, inputs: LearnInputs
) -> None:
    files = [("input", 0, "inputs/image.png", images.as_png(inputs.image, None))]
    files += [
        ("mask", i, f"inputs/masks/mask_{i:03d}.png", images.as_png(m, inputs.mask_threshold))
        for i, m in enumerate(inputs.masks)
    ]
    for kind, position, name, png in files:
        key = concept.prefix + name
        storage.put(key, png, "image/png")
        label = name.rsplit("/", 1)[-1]
        session.add(
            Artifact(
                concept_id=concept.id,
                kind=kind,
                position=position,
                key=key,
                size=len(png),
                label=label,
            )
        )
