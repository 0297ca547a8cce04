"""Service settings, read once from the environment (prefix MIFO_).

The defaults describe embedded mode: everything under MIFO_DATA_DIR (SQLite, a local object
folder and a file-system broker), so `mifo serve` runs with no servers to install.
Production sets MIFO_DATABASE_URL, MIFO_BROKER_URL and MIFO_STORAGE_URL.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core import kinds
from core.engine import (
    DEFAULT_BASE_MODEL,
    DEFAULT_CLIP_MODEL,
    DEFAULT_DINO_MODEL,
    DEFAULT_SEGMENT_MODEL,
    MifoError,
    check_feature_spec,
)

# Whether the workers take jobs of both kinds or each kind has its own (core/queueinfo.py).
WorkerPools = Literal["shared", "per-kind"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIFO_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Embedded mode: folder for every default.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default SQLite in data_dir."
    )
    broker_url: str = Field(
        "filesystem://", description="Celery broker; redis://... in production."
    )
    events_url: str | None = Field(
        None, description="Redis URL for progress pub/sub; default: the broker when it is Redis."
    )
    storage_url: str | None = Field(
        None, description="file:///path or s3://bucket/prefix; default data_dir/objects."
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO...).")
    s3_public_endpoint_url: str | None = Field(
        None, description="Endpoint clients reach for presigned downloads, if not the one above."
    )
    s3_region: str = "us-east-1"
    presign_seconds: int = Field(3600, ge=60, description="Lifetime of download URLs (S3).")
    base_model: str = Field(DEFAULT_BASE_MODEL, description="'tiny', a path or hub-id@revision.")
    device: str = Field("auto", description="Worker device: auto, cuda, cuda:1, cpu.")
    segment_model: str = Field(
        DEFAULT_SEGMENT_MODEL,
        description="Segmentations' SAM: 'tiny' (tests), a local folder or hub-id@commit.",
    )
    clip_model: str = Field(
        DEFAULT_CLIP_MODEL,
        description="Evaluations' CLIP (SIM-C): 'tiny', a local folder or hub-id@commit.",
    )
    dino_model: str = Field(
        DEFAULT_DINO_MODEL,
        description="Evaluations' DINO (SIM-D, NSIM-D): 'tiny', a local folder or hub-id@commit.",
    )
    cpu_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="Torch threads of a job on the CPU; 0: the cores left idle when it starts.",
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Per uploaded file.")
    progress_interval: float = Field(1.0, gt=0, description="Seconds between progress writes.")
    visibility_timeout: int = Field(
        6 * 3600,
        ge=1,
        description="Redis: seconds before an unacknowledged message is handed out again "
        "(a late copy, skipped: lost workers are found by their lease).",
    )
    db_connect_timeout: float = Field(
        3.0, ge=1, description="Seconds to open a database connection (PostgreSQL)."
    )
    db_pool_timeout: float = Field(
        3.0, gt=0, description="Seconds a request waits for a free pooled connection."
    )
    db_statement_timeout: float = Field(
        4.0, gt=0, description="Seconds a statement may run (PostgreSQL, server side)."
    )
    db_socket_timeout: float = Field(
        4.0, ge=1, description="Seconds without an acknowledgement before a link counts as dead."
    )
    db_answer_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds a call may wait for the server's answer before its connection is "
        "taken for stalled and dropped (PostgreSQL; more than db_statement_timeout).",
    )
    concept_cache_size: int = Field(4, ge=1, description="Concepts kept loaded per worker.")
    worker_pools: WorkerPools = Field(
        "shared",
        description="Who runs the learn and synthesize queues, as queue estimates assume: "
        "'shared' when every worker takes both (`mifo serve`, the default `mifo worker`), "
        "'per-kind' when each queue has workers of its own (`--queues learn`, `--queues "
        "synthesize`).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least level logged by every mifo process."
    )
    access_log: bool = Field(True, description="The API logs one line per request.")

    # Authentication. Keys are required unless `mifo serve` runs on a loopback address.
    require_api_keys: bool = Field(False, description="Demand keys even in embedded mode.")
    embedded: bool = Field(False, description="Set by `mifo serve`.")
    bind_host: str = Field("127.0.0.1", description="Set by `mifo serve` / `mifo api` --host.")
    url_signing_key: SecretStr | None = Field(
        None, description="Signs local download links; default: a random key in data_dir."
    )
    metrics_token: SecretStr | None = Field(
        None, description="Set: GET /metrics needs `Authorization: Bearer <this token>`."
    )

    # Limits: each breach is a problem JSON naming the field and this setting.
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64, description="Decoded pixels per file.")
    image_formats: list[str] = Field(["PNG", "JPEG", "WEBP"], description="Detected by content.")
    max_instances: int = Field(8, ge=1, description="Masks per concept.")
    max_images_per_synthesis: int = Field(8, ge=1, description="num_images per request.")
    max_synthesis_steps: int = Field(150, ge=1, description="Denoising steps per synthesis.")
    max_learn_steps: int = Field(2000, ge=1, description="phase1_steps and phase2_steps each.")
    max_prompt_chars: int = Field(500, ge=1, description="Prompt length in characters.")
    max_evaluation_prompts: int = Field(20, ge=1, description="Prompts per evaluation.")
    max_evaluation_images: int = Field(
        160, ge=1, description="Images per evaluation: its syntheses x images_per_prompt."
    )
    max_name_chars: int = Field(100, ge=1, description="Characters per instance name.")
    max_names_chars: int = Field(
        1000, ge=1, description="Characters of the `names` field (all names and commas)."
    )
    rate_limit_per_second: float = Field(20.0, ge=0, description="Per key; 0 turns it off.")
    rate_limit_burst: int = Field(40, ge=1, description="Requests a key may send at once.")
    rate_limit_url: str | None = Field(
        None, description="Redis for the shared rate limits; default: events_url."
    )
    max_active_jobs: int = Field(10, ge=1, description="Queued + running jobs per tenant.")
    idempotency_seconds: int = Field(24 * 3600, ge=1, description="Idempotency-Key lifetime.")

    # Jobs that crash, hang or run too long.
    max_attempts: int = Field(
        3, ge=1, description="Runs of a job whose worker was lost, before it fails."
    )
    lease_seconds: float = Field(
        30.0,
        ge=3,
        description="A running job whose worker stops renewing it this long is re-queued.",
    )
    heartbeat_seconds: float = Field(
        5.0, gt=0, description="How often a worker renews the lease of its running job."
    )
    reconcile_seconds: float = Field(
        10.0, gt=0, description="Period of the reconciler (lost messages, expired leases)."
    )
    learn_time_limit: float = Field(4 * 3600, gt=0, description="Seconds per learning job.")
    synthesize_time_limit: float = Field(1800, gt=0, description="Seconds per synthesis job.")
    evaluate_time_limit: float = Field(3600, gt=0, description="Seconds per evaluation job.")
    segment_time_limit: float = Field(300, gt=0, description="Seconds per segmentation job.")

    # Webhooks.
    webhook_max_attempts: int = Field(6, ge=1, description="Tries per webhook delivery.")
    webhook_backoff_seconds: float = Field(
        2.0, gt=0, description="First retry delay; doubles per try."
    )
    webhook_timeout_seconds: float = Field(5.0, gt=0, description="Per delivery attempt.")
    webhook_poll_seconds: float = Field(1.0, gt=0, description="How often the sender looks.")
    webhook_progress_seconds: float = Field(
        10.0, ge=0, description="Least time between two progress events of a job."
    )
    webhook_allowed_networks: list[str] = Field(
        [], description="CIDRs allowed although private/loopback, e.g. 127.0.0.1/32 in tests."
    )

    # Retention.
    synthesis_retention_seconds: int = Field(
        0, ge=0, description="Delete synthesis images this old; 0 keeps them."
    )
    segmentation_retention_seconds: int = Field(
        24 * 3600,
        ge=0,
        description="Delete a segmentation image and its masks this long after its last use; "
        "0 keeps them.",
    )
    maintenance_interval_seconds: float = Field(
        300, gt=0, description="Period of the retention task."
    )
    stale_job_grace_seconds: float = Field(
        600, gt=120, description="A job still running this long past its time limit fails."
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(
                "heartbeat_seconds must be at most half of lease_seconds, so that one late "
                "renewal does not lose a live job: lower MIFO_HEARTBEAT_SECONDS or raise "
                "MIFO_LEASE_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _answer_after_statement(self) -> Settings:
        if self.db_answer_timeout <= self.db_statement_timeout:
            raise ValueError(
                "db_answer_timeout must be more than db_statement_timeout, so that the server "
                "ends a slow statement before its connection is taken for stalled: raise "
                "MIFO_DB_ANSWER_TIMEOUT or lower MIFO_DB_STATEMENT_TIMEOUT"
            )
        return self

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("clip_model", "dino_model")
    @classmethod
    def _feature_spec(cls, value: str, info: ValidationInfo) -> str:
        try:
            check_feature_spec(value, str(info.field_name))
        except MifoError as exc:
            raise ValueError(f"{exc.message} Fix: {exc.fix}") from None
        return value

    @field_validator("storage_url")
    @classmethod
    def _known_storage(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("file", "s3"):
            raise ValueError("use file:///absolute/path or s3://bucket/prefix")
        return value

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        root = self.data_dir.resolve()
        if self.database_url is None:
            self.database_url = f"sqlite:///{root / 'mifo.db'}"
        if self.storage_url is None:
            self.storage_url = (root / "objects").as_uri()
        if self.events_url is None and self.broker_url.startswith(("redis://", "rediss://")):
            self.events_url = self.broker_url
        return self

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)  # raises ValueError naming the bad one
        return value

    def time_limit(self, kind: str) -> float:
        """The time limit of a job of `kind`, in seconds: its setting named in core.kinds
        (UnknownKind for a kind this release does not know)."""
        return float(getattr(self, kinds.get(kind).time_limit))

    @property
    def redis_url(self) -> str | None:
        """Redis shared by the API processes (rate limits); None: in-process buckets."""
        return self.rate_limit_url or self.events_url

    @property
    def db_url(self) -> str:
        assert self.database_url is not None
        return self.database_url

    @property
    def broker_folder(self) -> Path:
        """Message folder of the file-system broker (embedded mode)."""
        return self.data_dir.resolve() / "broker"


@lru_cache
def get_settings() -> Settings:
    return Settings()
