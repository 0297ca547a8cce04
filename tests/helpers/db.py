"""The databases of the service tests: a throwaway PostgreSQL database, rows wiped between
tests, and API keys made directly in the tables."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
from sqlalchemy import delete

from core import auth
from core.db import make_engine, make_sessionmaker, session_scope
from core.models import (
    ApiKey,
    Artifact,
    Concept,
    IdempotencyKey,
    Job,
    StorageCleanup,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
)
from core.settings import Settings

TENANT = "tests"
PG_ADMIN = os.environ.get("MIFO_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLES = (
    WebhookAttempt,
    WebhookDelivery,
    IdempotencyKey,
    Artifact,
    Job,
    Concept,
    ApiKey,
    Tenant,
    StorageCleanup,
)


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


def wipe(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(delete(table))
    engine.dispose()


def new_key(settings: Settings, tenant: str) -> str:
    engine = make_engine(settings.db_url)
    with session_scope(make_sessionmaker(engine)) as s:
        _, clear = auth.create_key(s, tenant=auth.get_or_create_tenant(s, tenant)[0])
    engine.dispose()
    return clear


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
