"""Rows to response bodies, with download URLs (presigned on S3, an API route otherwise)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session, selectinload

from api.http.state import AppState
from api.present_evaluation import evaluation_public
from api.present_segmentation import segmentation_public
from api.schemas import (
    ConceptPublic,
    ErrorPublic,
    ImagePublic,
    JobPublic,
    JobResult,
    ProgressPublic,
    QueuePublic,
    TokenPublic,
)
from core import kinds, queueinfo
from core.auth import sign_link
from core.models import Artifact, Concept, ConceptStatus, Job, JobStatus


class Presenter:
    def __init__(self, request: Request, state: AppState) -> None:
        self.request = request
        self.storage = state.storage
        self.link_key = state.link_key
        self.lifetime = state.settings.presign_seconds
        self.pools = state.settings.worker_pools

    def url(self, artifact: Artifact) -> str:
        """Presigned on S3; otherwise an API route with an expiring HMAC signature."""
        direct = self.storage.presigned_url(artifact.key)
        if direct is not None:
            return direct
        # Rounded up to 5 minutes so that a body stays the same between two polls (SSE).
        expires = -(-int(time.time()) // 300) * 300 + self.lifetime
        url = self.request.url_for("download_artifact", artifact_id=str(artifact.id))
        signature = sign_link(self.link_key, artifact.id, expires)
        return str(url.include_query_params(expires=expires, signature=signature))

    def path(self, name: str, **params: Any) -> str:
        return self.request.app.url_path_for(name, **{k: str(v) for k, v in params.items()})

    def concept(self, concept: Concept, learn_job: Job | None) -> ConceptPublic:
        """A concept; a failed or canceled one carries its learning job's error."""
        meta = concept.meta or {}
        ready = concept.status == ConceptStatus.READY
        maps = {a.label: self.url(a) for a in concept.artifacts if a.kind == "attention"}
        names = [t["name"] for t in meta.get("tokens", [])] or list(concept.names)
        tokens = [
            TokenPublic(token=f"<asset{i}>", name=name, attention_map=maps.get(f"<asset{i}>"))
            for i, name in enumerate(names)
        ]
        inputs = {
            "image": next((self.url(a) for a in concept.artifacts if a.kind == "input"), None),
            "masks": [self.url(a) for a in concept.artifacts if a.kind == "mask"],
        }
        return ConceptPublic(
            id=concept.id,
            status=concept.status,  # type: ignore[arg-type]
            base_model=concept.base_model,
            tokens=tokens,
            diagnostics=meta.get("diagnostics", {}),
            width=concept.width,
            height=concept.height,
            options=concept.options,
            learn_job_id=learn_job.id if learn_job else None,
            error=_error(learn_job) if learn_job and not ready else None,
            inputs=inputs,
            created_at=concept.created_at,
            updated_at=concept.updated_at,
            links={
                "self": self.path("get_concept", concept_id=concept.id),
                "syntheses": self.path("create_synthesis", concept_id=concept.id),
                "evaluations": self.path("create_evaluation", concept_id=concept.id),
            },
        )

    def job_by_id(self, session: Session, job_id: uuid.UUID) -> JobPublic:
        """The job as the API shows it, read anew."""
        job = session.get(Job, job_id, populate_existing=True)
        assert job is not None
        return self.job(job)

    def job(self, job: Job, spots: Mapping[uuid.UUID, queueinfo.Spot] | None = None) -> JobPublic:
        """A job; `spots`: the queue places of a page's jobs (queueinfo.spots), read in one
        go; without it a queued job's place is read here, in the job's own session."""
        if spots is None:
            session = object_session(job)
            spots = queueinfo.spots(session, [job], pools=self.pools) if session is not None else {}
        return JobPublic(
            id=job.id,
            kind=job.kind,
            status=job.status,  # type: ignore[arg-type]
            concept_id=job.concept_id,
            progress=ProgressPublic(
                phase=job.phase,
                step=job.step,
                total=job.total,
                fraction=job.fraction,
                eta_seconds=job.eta_seconds,
                losses=job.progress_losses or None,
            ),
            queue=_queue(spots.get(job.id)) if job.status == JobStatus.QUEUED else None,
            cancel_requested=job.cancel_requested,
            attempts=job.attempts,
            request=job.params,
            error=_error(job) if job.error_type else None,
            result=self._result(job),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            links={
                "self": self.path("get_job", job_id=job.id),
                "events": self.path("job_events", job_id=job.id),
                "cancel": self.path("cancel_job", job_id=job.id),
            }
            | (
                {"concept": self.path("get_concept", concept_id=job.concept_id)}
                if job.concept_id
                else {}
            ),
        )

    def _result(self, job: Job) -> JobResult | None:
        if job.status != "succeeded" or job.result is None:
            return None
        return RESULTS[kinds.get(job.kind).name](self, job)

    def _learn_result(self, job: Job) -> JobResult:
        if job.concept is None:
            return JobResult()
        return JobResult(concept=self.concept(job.concept, job))

    def _synthesis_result(self, job: Job) -> JobResult:
        assert job.result is not None
        files = {(a.kind, a.position): self.url(a) for a in job.artifacts}
        return JobResult(
            expired_at=job.result.get("expired_at"),
            images=[
                ImagePublic(
                    index=img["index"],
                    seed=img["seed"],
                    url=files.get(("image", img["index"])),
                    preview_url=files.get(("preview", img["index"])),
                    # Results recorded before the field was renamed say `diagnostics`.
                    in_box_share=img.get("in_box_share") or img.get("diagnostics") or {},
                    metrics=img.get("metrics"),
                )
                for img in job.result.get("images", [])
            ],
        )

    def _evaluation_result(self, job: Job) -> JobResult:
        expired = (job.result or {}).get("expired_at")
        return JobResult(evaluation=evaluation_public(self, job), expired_at=expired)

    def _segmentation_result(self, job: Job) -> JobResult:
        assert job.result is not None
        expired = job.result.get("expired_at")
        return JobResult(segmentation=segmentation_public(self, job), expired_at=expired)


# The result of a succeeded job, by its kind (core.kinds; every kind has one: tests/test_kinds.py).
RESULTS: dict[str, Callable[[Presenter, Job], JobResult]] = {
    kinds.LEARN.name: Presenter._learn_result,
    kinds.SYNTHESIZE.name: Presenter._synthesis_result,
    kinds.EVALUATE.name: Presenter._evaluation_result,
    kinds.SEGMENT.name: Presenter._segmentation_result,
}


# Loader options that fetch everything a body needs in a fixed number of queries (no N+1).
JOB_LOAD = (
    selectinload(Job.artifacts),
    selectinload(Job.concept).selectinload(Concept.artifacts),
)
CONCEPT_LOAD = (selectinload(Concept.artifacts),)


def learn_jobs(session: Session, concept_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Job]:
    """The learning job of each concept, in one query."""
    if not concept_ids:
        return {}
    made = Job.kind.in_(kinds.MAKE_CONCEPTS)
    rows = session.scalars(select(Job).where(made, Job.concept_id.in_(concept_ids)))
    return {job.concept_id: job for job in rows if job.concept_id is not None}


def next_page(request: Request, limit: int, offset: int, total: int) -> str | None:
    """The URL of the next page of a paged list, or None on the last page."""
    if offset + limit >= total:
        return None
    return str(request.url.include_query_params(limit=limit, offset=offset + limit))


def _queue(spot: queueinfo.Spot | None) -> QueuePublic | None:
    if spot is None:
        return None
    return QueuePublic(
        position=spot.position,
        ahead=spot.ahead,
        estimated_start_at=spot.start_at,
        estimated_start_seconds=spot.start_seconds,
    )


def _error(job: Job) -> ErrorPublic | None:
    if job.error_type is None:
        return None
    return ErrorPublic(type=job.error_type, message=job.error_message or "")
