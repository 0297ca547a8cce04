"""Test data: rows in known states and small generated images."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta
from typing import Any

from PIL import Image, ImageDraw
from sqlalchemy import update
from sqlalchemy.orm import Session

from core import auth, jobs
from core.models import Artifact, Concept, Job, utcnow

LEASE = 30.0  # seconds: the lease tests start jobs under


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def scene(size: int = 64) -> tuple[bytes, list[bytes]]:
    """An image with a red box on the left and a blue disc on the right, and their masks."""
    image = Image.new("RGB", (size, size), (200, 200, 180))
    draw = ImageDraw.Draw(image)
    left = (size // 16, size // 4, size // 2 - size // 16, 3 * size // 4)
    right = (size // 2 + size // 16, size // 4, size - size // 16, 3 * size // 4)
    draw.rectangle(left, fill=(220, 30, 30))
    draw.ellipse(right, fill=(30, 30, 220))
    masks = []
    for shape, box in (("rectangle", left), ("ellipse", right)):
        mask = Image.new("L", (size, size), 0)
        getattr(ImageDraw.Draw(mask), shape)(box, fill=255)
        masks.append(png(mask))
    return png(image), masks


def blank_mask(size: int = 64) -> bytes:
    return png(Image.new("L", (size, size), 0))


def concept_meta(names: list[str]) -> dict[str, Any]:
    """The parts of concept.json the API reads (as written by mifo_engine.Concept.metadata)."""
    return {
        "format_version": 1,
        "tokens": [
            {"token": f"<asset{i}>", "name": n, "init_word": None} for i, n in enumerate(names)
        ],
        "coarsest_attention_resolution": 8,
        "diagnostics": {f"<asset{i}>": {"in_mask_share": 0.5} for i in range(len(names))},
        "files": {"attention_maps": {}},
    }


def tenant_id(session: Session, name: str = "tests") -> uuid.UUID:
    """The tenant the `client` fixture's key belongs to (or another, by name)."""
    return auth.get_or_create_tenant(session, name)[0].id


def make_concept(
    session: Session,
    *,
    status: str = "ready",
    names: tuple[str, ...] = ("red box", "blue disc"),
    tenant: str = "tests",
) -> Concept:
    concept = Concept(
        tenant_id=tenant_id(session, tenant),
        status=status,
        base_model="tiny",
        names=list(names),
        options={},
        meta=concept_meta(list(names)) if status == "ready" else None,
        width=64,
        height=64,
    )
    session.add(concept)
    session.flush()
    return concept


def make_job(
    session: Session,
    concept: Concept,
    *,
    kind: str = "learn",
    status: str = "queued",
    params: dict[str, Any] | None = None,
) -> Job:
    job = jobs.create_job(
        session,
        tenant_id=concept.tenant_id,
        kind=kind,
        concept_id=concept.id,
        params=params or {},
    )
    job.status = status
    session.flush()
    return job


def make_artifact(
    session: Session, concept: Concept, job: Job | None, kind: str, i: int
) -> Artifact:
    art = Artifact(
        concept_id=concept.id,
        job_id=job.id if job else None,
        kind=kind,
        position=i,
        key=f"{concept.prefix}{kind}/{uuid.uuid4().hex}.png",
        size=1,
    )
    session.add(art)
    session.flush()
    return art


def lose_worker(session: Session, job_id: uuid.UUID, max_attempts: int = 3) -> list[jobs.Lapsed]:
    """As if the job's worker had died: its lease lapses, and the reconciler's first step
    (re-queue, or end after `max_attempts` losses) handles it."""
    session.execute(
        update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
    )
    return jobs.requeue_lapsed(session, max_attempts=max_attempts)


class Doorbell:
    """A broker for the reconciler: records what it sends; `waiting` messages per queue."""

    def __init__(self, waiting: int | None = 0, fail: bool = False) -> None:
        self.sent: list[tuple[uuid.UUID, str]] = []
        self.waiting, self.fail = waiting, fail

    def send(self, job_id: uuid.UUID, kind: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((job_id, kind))

    def depth(self, queue: str) -> int | None:
        return self.waiting
