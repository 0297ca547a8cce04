"""What the API process holds: built once at start-up from Settings."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.db import check_migrated, make_engine, make_sessionmaker
from core.settings import Settings
from core.storage import Storage, storage_from_settings
from worker.app import create_celery


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    celery: Celery

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        engine = make_engine(settings.db_url)
        check_migrated(engine)  # refuse to serve an unmigrated database
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            storage=storage_from_settings(settings),
            celery=create_celery(settings),
        )

    def tokenizer(self) -> Any:
        """The base model's tokenizer (no weights, no torch): loaded on first use."""
        return _load_tokenizer(self.settings.base_model)

    def close(self) -> None:
        self.engine.dispose()


@functools.cache
def _load_tokenizer(spec: str) -> Any:
    from mifo_engine.models import load_tokenizer

    return load_tokenizer(spec)
