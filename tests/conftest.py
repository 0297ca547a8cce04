"""Fixtures of the service tests (tests/api, tests/core, tests/worker): a throwaway
PostgreSQL database and a SQLite file per session, migrated once; routes and data functions
are tested against both (the `db_url` parameter)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from core.db import make_engine, make_sessionmaker, upgrade
from core.settings import Settings
from tests.helpers.db import TENANT, bearer, new_key, throwaway_postgres, wipe
from tests.helpers.serve import service  # noqa: F401 - a real `mifo serve` per module


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with throwaway_postgres() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'mifo.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Iterator[Settings]:
    wipe(db_url)
    yield Settings(
        data_dir=tmp_path,
        database_url=db_url,
        broker_url="memory://",  # messages are kept in-process; no worker consumes them
        storage_url=(tmp_path / "objects").as_uri(),
        base_model="tiny",  # random test weights: never meaningful images
        clip_model="tiny",  # the evaluations' feature models, random as well
        dino_model="tiny",
        segment_model="tiny",  # the segmentations' SAM, random too
        rate_limit_per_second=0,  # tests/api/test_limits.py turns it on
        webhook_poll_seconds=0.1,
        webhook_backoff_seconds=0.1,
        webhook_allowed_networks=["127.0.0.1/32"],
    )


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings.db_url)
    with make_sessionmaker(engine)() as s:
        yield s
    engine.dispose()


@pytest.fixture
def api_key(settings: Settings) -> str:
    """A key of the tenant the factories use (`tests`)."""
    return new_key(settings, TENANT)


@pytest.fixture
def client(settings: Settings, api_key: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=bearer(api_key)) as c:
        yield c
