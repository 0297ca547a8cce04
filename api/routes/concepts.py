"""Concepts: upload one image and its instance masks to learn tokens; read; delete."""

from __future__ import annotations

import io
import logging
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from PIL import Image
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from api import dispatch, submit
from api.deps import SessionDep, StateDep, StorageDep, TenantDep
from api.idempotency import Idempotency, KeyHeader, fingerprint
from api.present import CONCEPT_LOAD, Presenter, learn_jobs
from api.problems import PROBLEM_RESPONSE, not_found
from api.schemas import ConceptCreated, ConceptPublic, ConceptsPublic
from api.state import AppState
from api.uploads import Upload, read_upload
from core import cleanup, jobs
from core.db import retry_conflicts
from core.models import Artifact, Concept, Job, utcnow
from core.storage import StorageError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/concepts", tags=["concepts"])
ERRORS: dict[int | str, dict[str, Any]] = {
    404: PROBLEM_RESPONSE, 409: PROBLEM_RESPONSE, 413: PROBLEM_RESPONSE,
    422: PROBLEM_RESPONSE, 429: PROBLEM_RESPONSE, 503: PROBLEM_RESPONSE,
}  # fmt: skip


@router.post("", status_code=202, response_model=ConceptCreated, responses=ERRORS)
def create_concept(
    request: Request,
    response: Response,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    image: Annotated[UploadFile, File(description="The scene: PNG, JPEG or WebP (by content).")],
    masks: Annotated[
        list[UploadFile],
        File(
            min_length=1,
            description="One mask per instance, in order: white (or opaque) = the instance.",
        ),
    ],
    names: Annotated[
        str | None,
        Form(description="Comma-separated instance names.", examples=["red car,blue car"]),
    ] = None,
    options: Annotated[
        str | None,
        Form(
            description="JSON object of LearnConfig fields.",
            examples=['{"phase1_steps": 400, "phase2_steps": 200, "seed": 1}'],
        ),
    ] = None,
    webhook_url: Annotated[
        str | None, Form(description="Receives signed job events (Standard Webhooks).")
    ] = None,
    webhook_events: Annotated[
        str | None,
        Form(description="Comma-separated: started, progress, completed (default: all)."),
    ] = None,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Validate the inputs with the engine, store them and queue a learning job (202).

    Nothing is stored when the request is rejected. `Location` names the job to poll."""
    settings = state.settings
    upload = read_upload(image, masks, names, options, settings)
    state.check_base_model()  # 503 model_unavailable: a job would only fail
    events = [e.strip() for e in webhook_events.split(",")] if webhook_events is not None else None
    hook_url, hook_events = submit.webhook(webhook_url, events, settings)
    idem = Idempotency.begin(
        session, tenant_id=tenant, key=idempotency_key, ttl=settings.idempotency_seconds,
        fingerprint=fingerprint("POST /v1/concepts", upload.image, *upload.masks,
                                names or "", options or "", webhook_url or "",
                                webhook_events or ""),
        render=lambda job_id: _created(request, session, state, job_id),
    )  # fmt: skip
    if idem.replay is not None:
        return idem.replay
    def accept() -> tuple[Concept, Job]:
        with state.creating_job():  # the capacity check counts until the commit
            submit.check_capacity(session, tenant, settings)
            concept = Concept(
                id=uuid.uuid4(),
                tenant_id=tenant,
                status="pending",
                base_model=settings.base_model,
                names=upload.names or [f"asset{i}" for i in range(len(upload.masks))],
                options=upload.options,
                width=upload.width,
                height=upload.height,
            )
            session.add(concept)
            session.flush()
            job = jobs.create_job(
                session,
                tenant_id=tenant,
                kind="learn",
                concept_id=concept.id,
                params={"options": upload.options},
                webhook_url=hook_url,
                webhook_events=hook_events,
            )
            idem.attach(job.id, 202)
            try:
                _store_inputs(session, state.storage, concept, upload)
                job.updated_at = utcnow()  # the re-send grace (core/reconcile.py) starts now
                session.commit()
            except Exception as exc:  # nothing half-written stays behind
                session.rollback()
                what = f"the inputs of rejected concept {concept.id}"
                cleanup.remove(state.storage, state.sessions, concept.prefix, what)
                if isinstance(exc, StorageError):
                    raise submit.unavailable("storage", exc) from exc
                raise
        return concept, job

    try:
        concept, job = retry_conflicts(session, accept)
        _enqueue(session, state, concept, job)
        body = _created(request, session, state, job.id)
    except BaseException:
        idem.abandon()
        raise
    location = request.app.url_path_for("get_job", job_id=str(job.id))
    response.headers["Location"] = location
    idem.complete(body, {"Location": location})
    return body


def _created(request: Request, session: Session, state: AppState, job_id: uuid.UUID) -> Any:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and job.concept_id is not None
    concept = session.scalars(
        select(Concept).where(Concept.id == job.concept_id).options(*CONCEPT_LOAD)
    ).one()
    present = Presenter(request, state)
    return ConceptCreated(concept=present.concept(concept, job.id), job=present.job(job))


def _store_inputs(
    session: SessionDep, storage: StorageDep, concept: Concept, upload: Upload
) -> None:
    threshold = upload.config.mask_threshold
    files = [("input", 0, "inputs/image.png", _as_png(upload.image, None))]
    files += [
        ("mask", i, f"inputs/masks/mask_{i:03d}.png", _as_png(m, threshold))
        for i, m in enumerate(upload.masks)
    ]
    for kind, position, name, png in files:
        key = concept.prefix + name
        storage.put(key, png, "image/png")
        session.add(Artifact(concept_id=concept.id, kind=kind, position=position, key=key,
                             size=len(png), label=name.rsplit("/", 1)[-1]))  # fmt: skip


# Modes PIL's PNG writer stores as they are.
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B"})


def _as_png(data: bytes, mask_threshold: float | None) -> bytes:
    """Inputs are kept as PNG (lossless), whatever format they came in, meaning to the engine
    what the upload meant: upright (PNG keeps no EXIF orientation of the original) and, for a
    mode PNG cannot store (CMYK, YCbCr, LAB, 32-bit...), as the engine reads it: the image
    as its RGB view, a mask (`mask_threshold` given) as its foreground, white on black."""
    from mifo_engine.inputs import load_image, mask_to_binary, to_rgb  # torch-free

    with Image.open(io.BytesIO(data)) as original:
        if original.format == "PNG":
            return data
        img = load_image(original, field="image")
        if img.mode not in PNG_MODES:
            if mask_threshold is None:
                img = to_rgb(img)
            else:
                foreground = mask_to_binary(img, mask_threshold)
                img = Image.fromarray(foreground.astype(np.uint8) * 255)
        out = io.BytesIO()
        img.save(out, format="PNG")
        return out.getvalue()


def _enqueue(session: SessionDep, state: StateDep, concept: Concept, job: Job) -> None:
    try:
        dispatch.send(state, session, job.id, "learn")
    except Exception as exc:  # the broker is down: undo everything, say so
        log.error("could not queue job %s: %s", job.id, exc)
        session.execute(delete(Job).where(Job.id == job.id))
        session.execute(delete(Concept).where(Concept.id == concept.id))
        session.commit()
        what = f"the inputs of unqueued concept {concept.id}"
        cleanup.remove(state.storage, state.sessions, concept.prefix, what)
        raise submit.unavailable("broker", exc) from exc


@router.get("", response_model=ConceptsPublic, responses=ERRORS)
def list_concepts(
    request: Request,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> ConceptsPublic:
    """Concepts, newest first."""
    mine = Concept.tenant_id == tenant
    total = session.scalar(select(func.count()).select_from(Concept).where(mine)) or 0
    rows = session.scalars(
        select(Concept)
        .where(mine)
        .options(*CONCEPT_LOAD)
        .order_by(Concept.created_at.desc(), Concept.id)
        .limit(limit)
        .offset(offset)
    ).all()
    learn = learn_jobs(session, [c.id for c in rows])
    present = Presenter(request, state)
    return ConceptsPublic(
        data=[present.concept(c, learn.get(c.id)) for c in rows],
        total=total,
        limit=limit,
        offset=offset,
        next=_next(request, limit, offset, total),
    )


def _next(request: Request, limit: int, offset: int, total: int) -> str | None:
    if offset + limit >= total:
        return None
    return str(request.url.include_query_params(limit=limit, offset=offset + limit))


@router.get("/{concept_id}", response_model=ConceptPublic, responses=ERRORS)
def get_concept(
    concept_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
) -> ConceptPublic:
    """A concept: status, tokens and names, diagnostics, attention maps and input images."""
    concept = session.scalars(
        select(Concept)
        .where(Concept.id == concept_id, Concept.tenant_id == tenant)
        .options(*CONCEPT_LOAD)
    ).one_or_none()
    if concept is None:
        raise not_found("concept", concept_id)
    return Presenter(request, state).concept(
        concept, learn_jobs(session, [concept_id]).get(concept_id)
    )


@router.delete("/{concept_id}", status_code=204, responses=ERRORS)
def delete_concept(
    concept_id: uuid.UUID,
    session: SessionDep,
    state: StateDep,
    storage: StorageDep,
    tenant: TenantDep,
) -> Response:
    """Cancel the concept's unfinished jobs, delete its stored objects and the concept."""

    def delete() -> tuple[str, list[uuid.UUID]]:
        submit.lock_tenant(session, tenant)  # the lock order of every route: tenant first
        concept = session.get(Concept, concept_id, with_for_update=True)
        if concept is None or concept.tenant_id != tenant:
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

    prefix, changed = retry_conflicts(session, delete)
    state.job_changed(*changed)  # canceled, or lost their concept and its files
    # The rows are gone; objects that cannot be removed now are removed by maintenance.
    cleanup.remove(storage, state.sessions, prefix, f"the objects of deleted concept {concept_id}")
    return Response(status_code=204)
