"""What a worker process holds once: settings, database sessions, storage, the publisher."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from core.db import check_migrated, engine_from_settings, make_sessionmaker
from core.events import Publisher
from core.settings import Settings
from core.storage import Storage, storage_from_settings


@dataclass
class WorkerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    publisher: Publisher

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerContext:
        engine = engine_from_settings(settings)
        check_migrated(engine)
        return cls(
            settings=settings,
            sessions=make_sessionmaker(engine),
            storage=storage_from_settings(settings),
            publisher=Publisher(settings.events_url),
        )
