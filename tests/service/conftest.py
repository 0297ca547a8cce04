"""Fixtures: a throwaway PostgreSQL database and a SQLite file per session, migrated once;
routes and data functions are tested against both (the `db_url` parameter)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete
from sqlalchemy.orm import Session

from api.main import create_app
from core.db import make_engine, make_sessionmaker, upgrade
from core.models import Artifact, Concept, Job
from core.settings import Settings

PG_ADMIN = os.environ.get("MIFO_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Create an empty database for this test session and drop it afterwards."""
    name = f"mifo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


def wipe(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in (Artifact, Job, Concept):
            conn.execute(delete(table))
    engine.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Iterator[Settings]:
    wipe(db_url)
    yield Settings(
        data_dir=tmp_path,
        database_url=db_url,
        broker_url="memory://",  # messages are kept in-process; no worker consumes them
        storage_url=(tmp_path / "objects").as_uri(),
        base_model="tiny",  # random test weights: never meaningful images
    )


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings.db_url)
    with make_sessionmaker(engine)() as s:
        yield s
    engine.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c
