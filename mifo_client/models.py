"""Typed results: the fields of the API's response schemas a client needs.

Every model allows extra fields, so a server that adds fields does not break the client;
ids are the UUIDs as strings; statuses are plain strings (a new status is not an error)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

TERMINAL = ("succeeded", "failed", "canceled")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Token(_Model):
    token: str
    name: str
    attention_map: str | None = None


class JobError(_Model):
    type: str
    message: str


class Concept(_Model):
    id: str
    status: str
    base_model: str | None = None
    tokens: list[Token] = Field(default_factory=list)
    diagnostics: dict[str, Any] = Field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    learn_job_id: str | None = None
    error: JobError | None = None  # why learning failed (newer servers)
    inputs: dict[str, Any] = Field(default_factory=dict)  # URLs of the uploaded image, masks
    created_at: datetime | None = None
    updated_at: datetime | None = None
    links: dict[str, str] = Field(default_factory=dict)


class Progress(_Model):
    phase: str | None = None
    step: int | None = None
    total: int | None = None
    fraction: float | None = None
    eta_seconds: float | None = None
    losses: dict[str, float] | None = None  # the latest step's loss terms (learning)


class Image(_Model):
    index: int
    seed: int
    url: str | None = None
    preview_url: str | None = None
    # Per boxed token: the share of the subject's attention inside its box, 0..1 (older
    # servers sent it as `diagnostics`).
    in_box_share: dict[str, float] = Field(
        default_factory=dict, validation_alias=AliasChoices("in_box_share", "diagnostics")
    )


class Queue(_Model):
    """A queued job's place in its queue; the start is the server's estimate, not a promise."""

    position: int  # 1: the next of its queue to start
    ahead: int  # queued jobs before it plus the running jobs of its queue
    estimated_start_at: datetime | None = None
    estimated_start_seconds: float | None = None


class JobResult(_Model):
    concept: Concept | None = None
    images: list[Image] | None = None
    expired_at: datetime | None = None


class Job(_Model):
    id: str
    kind: str
    status: str
    concept_id: str | None = None
    progress: Progress = Field(default_factory=Progress)
    queue: Queue | None = None  # while queued (newer servers)
    cancel_requested: bool = False
    attempts: int = 0
    request: dict[str, Any] = Field(default_factory=dict)
    error: JobError | None = None
    result: JobResult | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    links: dict[str, str] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Succeeded, failed or canceled: the job will not change any more."""
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class ConceptCreated(_Model):
    """The answer to `learn`: the pending concept and the job that learns it (both as they
    ended, with `wait=N` when the job ended within it)."""

    concept: Concept
    job: Job


class Page(_Model):
    total: int
    limit: int
    offset: int
    next: str | None = None


class ConceptsPage(Page):
    data: list[Concept]


class JobsPage(Page):
    data: list[Job]
