"""Request and response bodies. Table rows become these in api/present.py."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from api.checks.inputs import TEXT_FIX, forbidden_character, options_problem
from core import kinds
from core.models import ConceptStatus, JobStatus

if TYPE_CHECKING:
    JobKind = str
else:  # the names of core.kinds, as an enum in the OpenAPI document
    JobKind = Literal[kinds.NAMES]
WebhookEvent = Literal["started", "progress", "completed"]

_CID = "6f1c2f5e-8d3b-4c39-9a57-1f0e6c2b7a10"
_JID = "0b7d5a52-3c6e-4f1a-8e0f-5d2f7f9c4e21"


class Link(BaseModel):
    url: str = Field(description="Download URL: presigned (S3) or an API route (local storage).")


class TokenPublic(BaseModel):
    token: str = Field(examples=["<asset0>"])
    name: str = Field(examples=["red car"])
    attention_map: str | None = Field(None, description="URL of the token's attention map.")


class ConceptPublic(BaseModel):
    id: uuid.UUID
    status: ConceptStatus
    base_model: str
    tokens: list[TokenPublic]
    diagnostics: dict[str, Any] = Field(
        default_factory=dict, description="Per-token attention diagnostics of the engine."
    )
    width: int
    height: int
    options: dict[str, Any] = Field(description="LearnConfig fields set at creation.")
    learn_job_id: uuid.UUID | None
    error: ErrorPublic | None = Field(
        None, description="Why learning failed (its job's error); null otherwise."
    )
    inputs: dict[str, Any] = Field(description="URLs of the uploaded image and masks.")
    created_at: datetime
    updated_at: datetime
    links: dict[str, str]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _CID,
                    "status": "ready",
                    "base_model": "tiny",
                    "tokens": [
                        {"token": "<asset0>", "name": "red car", "attention_map": "http://..."},
                        {"token": "<asset1>", "name": "blue car", "attention_map": "http://..."},
                    ],
                    "diagnostics": {"<asset0>": {"in_mask_share": 0.61}},
                    "width": 512,
                    "height": 512,
                    "options": {"phase1_steps": 800},
                    "learn_job_id": _JID,
                    "inputs": {"image": "http://...", "masks": ["http://...", "http://..."]},
                    "created_at": "2025-01-01T12:00:00Z",
                    "updated_at": "2025-01-01T12:20:00Z",
                    "links": {
                        "self": f"/v1/concepts/{_CID}",
                        "syntheses": f"/v1/concepts/{_CID}/syntheses",
                    },
                }
            ]
        }
    )


class Page(BaseModel):
    total: int = Field(description="Items matching the filters, over all pages.")
    limit: int
    offset: int
    next: str | None = Field(description="URL of the next page, or null on the last one.")


class ConceptsPublic(Page):
    data: list[ConceptPublic]


class ProgressPublic(BaseModel):
    phase: str | None = Field(examples=["phase1"])
    step: int | None = Field(examples=[120])
    total: int | None = Field(examples=[800])
    fraction: float | None = Field(description="Share of the whole job done, 0..1.")
    eta_seconds: float | None
    losses: dict[str, float] | None = Field(
        None,
        description="The loss terms of the latest reported step: in learning rec (masked "
        "reconstruction), reward or penalty (cross-attention), prior; in synthesis guidance "
        "(the layout loss, on the optimised steps only); null when the step had none.",
        examples=[{"rec": 0.21, "reward": 0.05}],
    )


class ErrorPublic(BaseModel):
    type: str = Field(examples=["instance_too_small"])
    message: str


class ImagePublic(BaseModel):
    index: int
    seed: int
    url: str | None
    preview_url: str | None = Field(description="The image with its boxes and names drawn.")
    in_box_share: dict[str, float] = Field(
        default_factory=dict,
        description="Per boxed token: the share of the subject's attention (its token's "
        "cross-attention) that falls inside its box, 0..1; 1 is all of it. Empty without "
        "boxes. The CLI's synthesis.json has the same name.",
        examples=[{"<asset0>": 0.82, "<asset1>": 0.77}],
    )
    metrics: ImageMetricsPublic | None = Field(
        None, description="SIM-C, and SIM-D, NSIM-D and CS per subject: with `evaluate: true`."
    )


class QueuePublic(BaseModel):
    """Where a queued job stands in its queue (learning and synthesis jobs have one each),
    counted from the job rows of every tenant, in order of creation."""

    position: int = Field(
        ge=1, description="1: the next job of its queue to start; 1 + the queued jobs before it."
    )
    ahead: int = Field(
        ge=0, description="Jobs before it: those queued jobs plus its queue's running jobs."
    )
    estimated_start_at: datetime | None = Field(
        description="An estimate, not a promise: when it should start, from the mean running "
        "time of recent succeeded jobs of its kind, the running jobs' ETAs, and one worker "
        "per running job of its queue (at least one). Null without a basis (no succeeded job "
        "of its kind yet, or a running job whose end is unknown)."
    )
    estimated_start_seconds: float | None = Field(
        description="The same estimate as seconds from when the body was made."
    )


class SubjectMetricsPublic(BaseModel):
    """One subject (a boxed token) of one generated image (docs/engine-api.md, "Metrics")."""

    sim_d: float = Field(description="Cosine of DINO embeddings: its region vs its instance.")
    nsim_d: float | None = Field(
        description="Mean cosine of its region vs every other instance; null with one instance."
    )
    cs: float | None = Field(description="SIM-C x SIM-D x (1 - NSIM-D); null without NSIM-D.")


class ImageMetricsPublic(BaseModel):
    """The quality metrics of one generated image."""

    sim_c: float = Field(description="Cosine of CLIP's embeddings of the image and `text`.")
    text: str = Field(description="The prompt with each token replaced by its instance name.")
    subjects: dict[str, SubjectMetricsPublic] = Field(
        default_factory=dict, description="Per boxed token."
    )


class MetricRowPublic(BaseModel):
    """One token's metrics over the images it appears in (or, `token` "mean", all of them):
    each metric's mean and population standard deviation; `cs` is the composite of the
    means, `cs_std` the spread of the composites of each (image, subject) pair. Null where
    nothing was measured (NSIM-D and CS of a concept of one instance)."""

    token: str = Field(examples=["<asset0>"])
    name: str = Field(examples=["red car"])
    images: int = Field(description="(image, subject) pairs counted.")
    sim_c: float | None
    sim_d: float | None
    nsim_d: float | None
    cs: float | None
    sim_c_std: float | None
    sim_d_std: float | None
    nsim_d_std: float | None
    cs_std: float | None


class EvaluatedImagePublic(ImageMetricsPublic):
    index: int
    prompt: str = Field(description="The prompt synthesised, with the concept's tokens.")
    seed: int
    url: str | None


class EvaluationPublic(BaseModel):
    rows: list[MetricRowPublic] = Field(description="One row per token, in token order.")
    mean: MetricRowPublic = Field(description="Every (image, subject) pair.")
    images: list[EvaluatedImagePublic]
    chart: Link | None = Field(description="PNG: a bar per metric and row, std as error bars.")
    record: Link | None = Field(description="evaluation.json: everything above and the config.")
    references: dict[str, str] = Field(
        default_factory=dict,
        description="Per token: URL of its masked input instance, as DINO compares it.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="The EvaluationConfig it ran with."
    )
    feature_models: dict[str, Any] = Field(
        default_factory=dict, description="The CLIP and DINO that scored: spec, id, revision."
    )


class SegmentMaskPublic(BaseModel):
    """One mask of a segmentation: a PNG of the image's size, mode L, 255 on the instance, as
    POST /v1/concepts takes masks."""

    index: int = Field(description="The instance's place in `prompts` (candidates: the rank).")
    url: str | None = Field(description="The mask's PNG; null once retention removed it.")
    score: float = Field(description="SAM's predicted IoU of the mask: its own quality estimate.")
    area: int = Field(description="Pixels on the instance.")
    box: list[int] | None = Field(
        description="[x0, y0, x1, y1] in pixels around the mask (x1, y1 one past it); null "
        "when the mask is empty."
    )


class SegmentCandidatePublic(SegmentMaskPublic):
    """An instance found without prompts (mode `proposals`), best first."""

    stability: float = Field(description="IoU of the mask thresholded a little lower and higher.")
    point: list[float] = Field(description="[x, y]: the grid point that found it.")


class SegmentationPublic(BaseModel):
    """A segmentation's masks (kind `segment`)."""

    mode: Literal["prompts", "proposals"]
    image_id: uuid.UUID = Field(
        description="Send it as `image_id` with the next clicks on this image: no upload, and "
        "the worker reuses the image's embedding."
    )
    width: int
    height: int
    masks: list[SegmentMaskPublic] = Field(
        default_factory=list, description="Mode `prompts`: one per instance, in prompt order."
    )
    candidates: list[SegmentCandidatePublic] = Field(
        default_factory=list, description="Mode `proposals`: the instances found, best first."
    )
    overlay_url: str | None = Field(
        description="PNG: the image with each mask tinted in its instance's colour, the clicks "
        "and boxes drawn."
    )
    embedding_reused: bool = Field(
        description="The worker had the image's embedding already: only the clicks were decoded."
    )


class JobResult(BaseModel):
    concept: ConceptPublic | None = None
    images: list[ImagePublic] | None = None
    evaluation: EvaluationPublic | None = Field(
        None, description="An evaluation's metrics (kind `evaluate`)."
    )
    segmentation: SegmentationPublic | None = Field(
        None, description="A segmentation's masks (kind `segment`)."
    )
    expired_at: datetime | None = Field(
        None,
        description="When the files were deleted (a synthesis' images, an evaluation's files: "
        "MIFO_SYNTHESIS_RETENTION_SECONDS; a segmentation's masks: "
        "MIFO_SEGMENTATION_RETENTION_SECONDS).",
    )


class JobPublic(BaseModel):
    id: uuid.UUID
    kind: JobKind
    status: JobStatus
    concept_id: uuid.UUID | None
    progress: ProgressPublic
    queue: QueuePublic | None = Field(
        None, description="Its place in its queue while queued; null once it started or ended."
    )
    cancel_requested: bool
    attempts: int
    request: dict[str, Any] = Field(description="The parameters the job runs with.")
    error: ErrorPublic | None
    result: JobResult | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _JID,
                    "kind": "synthesize",
                    "status": "running",
                    "concept_id": _CID,
                    "progress": {
                        "phase": "synthesis",
                        "step": 20,
                        "total": 50,
                        "fraction": 0.4,
                        "eta_seconds": 12.5,
                    },
                    "queue": None,
                    "cancel_requested": False,
                    "attempts": 1,
                    "request": {"prompt": "<asset0> and <asset1> on a beach"},
                    "error": None,
                    "result": None,
                    "created_at": "2025-01-01T12:30:00Z",
                    "started_at": "2025-01-01T12:30:02Z",
                    "finished_at": None,
                    "links": {
                        "self": f"/v1/jobs/{_JID}",
                        "events": f"/v1/jobs/{_JID}/events",
                        "cancel": f"/v1/jobs/{_JID}/cancel",
                    },
                }
            ]
        }
    )


class JobsPublic(Page):
    data: list[JobPublic]


class ConceptCreated(BaseModel):
    concept: ConceptPublic
    job: JobPublic


class SynthesisCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # "no" is not false, "0.5" is not a number: a wrong type names its field
        allow_inf_nan=False,  # JSON has no NaN or Infinity, though Python's parser takes them
        json_schema_extra={
            "examples": [
                {
                    "prompt": "a photo of <asset0> and <asset1> at the beach",
                    "boxes": {
                        "<asset0>": [0.05, 0.3, 0.45, 0.8],
                        "<asset1>": [0.55, 0.3, 0.95, 0.8],
                    },
                    "num_images": 2,
                    "seed": 7,
                    "steps": 50,
                    "guidance_scale": 7.5,
                    "box_control": True,
                }
            ]
        },
    )

    prompt: str = Field(
        min_length=1,
        description="Mentions each boxed token; at most MIFO_MAX_PROMPT_CHARS characters "
        "(default 500).",
    )
    # Shape and range are checked by the engine, which names the box: boxes[<asset0>].
    boxes: dict[str, list[float]] = Field(
        default_factory=dict,
        description="One box per token (or instance name): [x0, y0, x1, y1] as image fractions. "
        "Leave it out for plain generation.",
    )
    num_images: int = Field(
        1, ge=1, description="Images to make; at most MIFO_MAX_IMAGES_PER_SYNTHESIS (default 8)."
    )
    seed: int = Field(0, ge=0, le=2**63 - 1)
    steps: int = Field(
        50, ge=1, description="Denoising steps; at most MIFO_MAX_SYNTHESIS_STEPS (default 150)."
    )
    guidance_scale: float = Field(7.5, ge=1.0, le=50.0)
    box_control: bool = Field(True, description="False: plain generation, boxes ignored.")
    evaluate: bool = Field(
        False,
        description="True: score each image with the evaluation's metrics (its `metrics`: "
        "SIM-C, and SIM-D, NSIM-D and CS per boxed subject).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Further SynthesisConfig fields (expert use)."
    )
    webhook_url: str | None = Field(
        None, max_length=2000, description="Receives signed job events (Standard Webhooks)."
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None, min_length=1, description="Events to send; default: all of them."
    )

    @field_validator("prompt")
    @classmethod
    def _printable(cls, prompt: str) -> str:
        if found := forbidden_character(prompt):
            raise PydanticCustomError(
                "forbidden_character", "prompt {found}", {"found": found, "fix": TEXT_FIX}
            )
        return prompt

    @field_validator("options")
    @classmethod
    def _bounded(cls, options: dict[str, Any]) -> dict[str, Any]:
        if found := options_problem(options):
            raise PydanticCustomError("options_too_large", found[0], {"fix": found[1]})
        return options


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "prompts": ["a photo of {token} at the beach", "<asset0> next to <asset1>"],
                    "images_per_prompt": 2,
                    "steps": 50,
                    "seed": 0,
                }
            ]
        },
    )

    prompts: list[str] | None = Field(
        None,
        description="Each a template with `{token}` where one instance goes (synthesised once "
        "per instance), or a prompt naming the concept's tokens (once, one box per token). "
        "Leave it out for the paper's ten templates; at most MIFO_MAX_EVALUATION_PROMPTS "
        "(default 20), each at most MIFO_MAX_PROMPT_CHARS characters.",
    )
    images_per_prompt: int = Field(
        2,
        ge=1,
        description="Images of each synthesis; at most MIFO_MAX_IMAGES_PER_SYNTHESIS (default 8).",
    )
    steps: int = Field(
        50, ge=1, description="DDIM steps of each; at most MIFO_MAX_SYNTHESIS_STEPS (default 150)."
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Each synthesis uses seed, seed+1, ...")
    webhook_url: str | None = Field(
        None, max_length=2000, description="Receives signed job events (Standard Webhooks)."
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None, min_length=1, description="Events to send; default: all of them."
    )

    @field_validator("prompts")
    @classmethod
    def _some_printable(cls, prompts: list[str] | None) -> list[str] | None:
        if prompts is not None and not prompts:
            raise PydanticCustomError(
                "empty_prompts",
                "prompts is an empty list",
                {"fix": "give at least one prompt, or leave prompts out for the ten defaults"},
            )
        for i, prompt in enumerate(prompts or []):
            if found := forbidden_character(prompt):
                raise PydanticCustomError(
                    "forbidden_character",
                    "prompts[{i}] {found}",
                    {"i": i, "found": found, "fix": TEXT_FIX},
                )
        return prompts


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class WebhookAttemptPublic(BaseModel):
    number: int
    status_code: int | None = Field(description="The receiver's answer; null: no answer.")
    error: str | None
    duration_ms: float
    created_at: datetime


class WebhookDeliveryPublic(BaseModel):
    id: uuid.UUID = Field(description="The `webhook-id` header: the same on every retry.")
    event: str = Field(examples=["job.completed"])
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: list[WebhookAttemptPublic]
    next_attempt_at: datetime | None
    created_at: datetime


class WebhookDeliveriesPublic(BaseModel):
    data: list[WebhookDeliveryPublic]


class WebhookSecret(BaseModel):
    secret: str = Field(description="HMAC key, base64 after `whsec_` (Standard Webhooks).")
