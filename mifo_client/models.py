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


class SubjectMetrics(_Model):
    """One subject (a boxed token) of one image: SIM-D, NSIM-D (None with one instance) and
    CS = SIM-C x SIM-D x (1 - NSIM-D)."""

    sim_d: float
    nsim_d: float | None = None
    cs: float | None = None


class ImageMetrics(_Model):
    """The quality metrics of one image: SIM-C against `text` (the prompt with instance
    names for tokens), and each subject's."""

    sim_c: float
    text: str = ""
    subjects: dict[str, SubjectMetrics] = Field(default_factory=dict)


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
    metrics: ImageMetrics | None = None  # a synthesis asked for with evaluate=True


class MetricRow(_Model):
    """One token's metrics over its images (token "mean": all of them): each metric's mean
    and its standard deviation (`*_std`); `cs` is the composite of the means. None where
    nothing was measured (NSIM-D and CS of a concept of one instance)."""

    token: str
    name: str = ""
    images: int = 0
    sim_c: float | None = None
    sim_d: float | None = None
    nsim_d: float | None = None
    cs: float | None = None
    sim_c_std: float | None = None
    sim_d_std: float | None = None
    nsim_d_std: float | None = None
    cs_std: float | None = None


class EvaluatedImage(ImageMetrics):
    index: int
    prompt: str
    seed: int
    url: str | None = None


class Link(_Model):
    url: str


class Evaluation(_Model):
    """An evaluation's result: a row per token, the mean row, each image's scores, the chart
    (PNG) and evaluation.json as links."""

    rows: list[MetricRow] = Field(default_factory=list)
    mean: MetricRow
    images: list[EvaluatedImage] = Field(default_factory=list)
    chart: Link | None = None
    record: Link | None = None  # evaluation.json
    references: dict[str, str] = Field(default_factory=dict)  # token -> masked instance URL
    config: dict[str, Any] = Field(default_factory=dict)
    feature_models: dict[str, Any] = Field(default_factory=dict)


class Queue(_Model):
    """A queued job's place in its queue; the start is the server's estimate, not a promise."""

    position: int  # 1: the next of its queue to start
    ahead: int  # queued jobs before it plus the running jobs of its queue
    estimated_start_at: datetime | None = None
    estimated_start_seconds: float | None = None


class SegmentMask(_Model):
    """One mask of a segmentation: a PNG of the image's size, 255 on the instance, as
    `learn` takes masks."""

    index: int  # the instance's place in the prompts (a candidate's: its rank)
    url: str | None = None  # None once retention removed it
    score: float = 0.0  # SAM's predicted IoU: its own estimate of the mask's quality
    area: int = 0  # pixels on the instance
    box: list[int] | None = None  # [x0, y0, x1, y1] around it, x1 and y1 one past it


class SegmentCandidate(SegmentMask):
    """An instance found without prompts (`propose`), best first."""

    stability: float = 0.0
    point: list[float] = Field(default_factory=list)  # the grid point that found it


class Segmentation(_Model):
    """A segmentation's result: send `image_id` with the next clicks on the same image."""

    mode: str  # prompts | proposals
    image_id: str
    width: int
    height: int
    masks: list[SegmentMask] = Field(default_factory=list)  # one per instance, in order
    candidates: list[SegmentCandidate] = Field(default_factory=list)  # proposals, best first
    overlay_url: str | None = None
    embedding_reused: bool = False


class JobResult(_Model):
    concept: Concept | None = None
    images: list[Image] | None = None
    expired_at: datetime | None = None
    evaluation: Evaluation | None = None  # kind "evaluate"
    segmentation: Segmentation | None = None  # kind "segment"


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
