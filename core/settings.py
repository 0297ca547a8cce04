"""Service settings, read once from the environment (prefix MIFO_).

The defaults describe embedded mode: everything under MIFO_DATA_DIR (SQLite, a local object
folder and a file-system broker), so `mifo serve` runs with no servers to install.
Production sets MIFO_DATABASE_URL, MIFO_BROKER_URL and MIFO_STORAGE_URL.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mifo_engine.models import DEFAULT_BASE_MODEL  # a cheap import: no torch


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
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Per uploaded file.")
    progress_interval: float = Field(1.0, gt=0, description="Seconds between progress writes.")
    visibility_timeout: int = Field(
        6 * 3600, ge=60, description="Seconds before an unacknowledged job is redelivered."
    )
    concept_cache_size: int = Field(4, ge=1, description="Concepts kept loaded per worker.")

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
