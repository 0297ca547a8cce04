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
from core import auth
from core.db import make_engine, make_sessionmaker, session_scope, upgrade
from core.models import (
    ApiKey,
    Artifact,
    Concept,
    IdempotencyKey,
    Job,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
)
from core.settings import Settings

TENANT = "tests"
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


TABLES = (WebhookAttempt, WebhookDelivery, IdempotencyKey, Artifact, Job, Concept, ApiKey, Tenant)


def wipe(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in TABLES:
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
        rate_limit_per_second=0,  # tests/service/test_limits.py turns it on
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


def new_key(settings: Settings, tenant: str) -> str:
    engine = make_engine(settings.db_url)
    with session_scope(make_sessionmaker(engine)) as s:
        _, clear = auth.create_key(s, tenant=auth.get_or_create_tenant(s, tenant)[0])
    engine.dispose()
    return clear


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(settings: Settings, api_key: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=bearer(api_key)) as c:
        yield c
