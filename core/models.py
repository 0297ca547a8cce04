"""Tables. One history of migrations (migrations/) serves PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable constraint names so that migrations can refer to them on both back ends.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps; SQLite drops the zone, so it is put back on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    """Who owns concepts and jobs. API keys and the webhook signing secret belong to one."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # Standard Webhooks secret ("whsec_" + base64); the server signs with it, so it is kept.
    webhook_secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A key is "<id>.<secret>"; only the id and sha256 of the whole key are stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


def concept_prefix(concept_id: uuid.UUID) -> str:
    """Storage key prefix holding every object of a concept."""
    return f"concepts/{concept_id}/"


class ConceptStatus(StrEnum):
    """A concept's state (core/concepts.py moves it): stored as its value."""

    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"
    CANCELED = "canceled"


class Concept(Base):
    __tablename__ = "concepts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), default=ConceptStatus.PENDING)  # ConceptStatus
    base_model: Mapped[str] = mapped_column(String(300))
    names: Mapped[list[Any]] = mapped_column()  # one display name per instance, in mask order
    options: Mapped[dict[str, Any]] = mapped_column()  # LearnConfig fields the client set
    meta: Mapped[dict[str, Any] | None] = mapped_column()  # the engine's concept.json once ready
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    # The learned concept's folder: the prefix of the learning attempt that succeeded.
    files: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="concept", order_by="Artifact.kind, Artifact.position", viewonly=True
    )

    @property
    def prefix(self) -> str:
        """Storage key prefix holding every object of this concept."""
        return concept_prefix(self.id)

    @property
    def files_prefix(self) -> str:
        """Where the learned concept is (`concept/` for concepts from before `files`)."""
        return self.files or f"{self.prefix}concept/"


def segment_image_prefix(image_id: uuid.UUID) -> str:
    """Storage key prefix holding a segmentation image and every mask made on it."""
    return f"segmentations/{image_id}/"


class SegmentImage(Base):
    """An image uploaded to be segmented: the tenant's, not a concept's. Every segmentation
    of it (a `segment` job naming it by `image_id`) writes under its prefix; the image and
    they go together, MIFO_SEGMENTATION_RETENTION_SECONDS after its last use (core.retention)."""

    __tablename__ = "segment_images"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by each segmentation asked of it: retention counts from here.
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    @property
    def prefix(self) -> str:
        return segment_image_prefix(self.id)

    @property
    def key(self) -> str:
        """The stored image: PNG, upright, as it was uploaded."""
        return f"{self.prefix}image.png"


class JobStatus(StrEnum):
    """A job's state (core/jobs.py moves it): stored as its value."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_kind_created", "status", "kind", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # a name of core.kinds
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)  # JobStatus
    # SET NULL: a job outlives its deleted concept so that its cancellation stays visible.
    concept_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("concepts.id", ondelete="SET NULL"), index=True
    )
    params: Mapped[dict[str, Any]] = mapped_column()  # request fields the worker needs
    phase: Mapped[str | None] = mapped_column(String(32))
    step: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int | None] = mapped_column(Integer)
    fraction: Mapped[float | None] = mapped_column(Float)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    # The loss terms of the latest step written with the progress (learning), by name.
    progress_losses: Mapped[dict[str, Any] | None] = mapped_column()
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # also the fencing token of a run
    losses: Mapped[int] = mapped_column(Integer, default=0)  # runs whose worker was lost
    # While running: the worker renews it (core.jobs.renew); once it lapses, the reconciler
    # re-queues the job (core.reconcile). NULL while the job is not running.
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_events: Mapped[list[Any] | None] = mapped_column()  # started|progress|completed
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set once the broker took the job's message; a queued job still without it is sent
    # by the reconciler (core/reconcile.py), so an API crash between commit and send loses
    # nothing.
    enqueued_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    concept: Mapped[Concept | None] = relationship(viewonly=True)
    artifacts: Mapped[list[Artifact]] = relationship(
        order_by="Artifact.kind, Artifact.position", viewonly=True
    )


class Artifact(Base):
    """One stored object a client may download (input, attention map, image, preview, mask).
    It belongs to a concept, or to a segmentation image (a segmentation's masks), and goes
    with it."""

    __tablename__ = "artifacts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    concept_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("concepts.id", ondelete="CASCADE"), index=True
    )
    image_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("segment_images.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # input|mask|attention|image|preview
    position: Mapped[int] = mapped_column(Integer, default=0)
    label: Mapped[str | None] = mapped_column(String(200))  # e.g. the token an attention map shows
    key: Mapped[str] = mapped_column(String(500), unique=True)
    content_type: Mapped[str] = mapped_column(String(100), default="image/png")
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    concept: Mapped[Concept | None] = relationship(back_populates="artifacts")


class StorageCleanup(Base):
    """A storage prefix whose removal failed after the rows pointing at it were deleted; the
    maintenance task tries again until it is gone (core/cleanup.py)."""

    __tablename__ = "storage_cleanups"

    prefix: Mapped[str] = mapped_column(String(500), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class IdempotencyKey(Base):
    """A POST accepted under an Idempotency-Key: replayed for the same key and body."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of method, path and body
    job_id: Mapped[uuid.UUID | None] = mapped_column()
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column()  # {"body": ..., "headers": ...}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class WebhookDelivery(Base):
    """One event of a job for its webhook (an outbox row written with the job change)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))  # job.started|job.progress|job.completed
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    tries: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.number", viewonly=True
    )


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
