"""Migrated databases holding jobs of every kind and status, for the checks that run what the
manifests and the dashboard ask of the database and the metrics."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db import make_engine, make_sessionmaker, session_scope, upgrade
from core.jobs import STATUSES
from core.kinds import NAMES as KINDS
from core.models import Job, Tenant
from core.settings import Settings

PG_ADMIN = os.environ.get("MIFO_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def sqlite_url(folder: Path) -> str:
    url = f"sqlite:///{folder / 'mifo.db'}"
    upgrade(url)
    return url


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    """A throwaway migrated PostgreSQL database (skipped when no server answers)."""
    import psycopg

    name = f"mifo_deploy_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG_ADMIN} (MIFO_TEST_PG_ADMIN): {exc}")
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        url = f"{base}/{name}"
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(url: str) -> dict[tuple[str, str], int]:
    """Jobs of every kind and status, a different number of each; returns the numbers."""
    counts = {
        (kind, str(status)): 1 + i + 2 * j
        for i, kind in enumerate(KINDS)
        for j, status in enumerate(STATUSES)
    }
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as session:
        tenant = Tenant(name="deploy-tests", webhook_secret="whsec_test")
        session.add(tenant)
        session.flush()
        for (kind, status), n in counts.items():
            ended = status in ("succeeded", "failed", "canceled")
            for k in range(n):
                session.add(
                    Job(
                        tenant_id=tenant.id,
                        kind=kind,
                        status=status,
                        params={},
                        duration_seconds=10.0 * (k + 1) if ended else None,
                    )
                )
    engine.dispose()
    return counts


def app_settings(folder: Path) -> Settings:
    """Settings of an API over a migrated SQLite database holding `seed`'s jobs."""
    url = sqlite_url(folder)
    seed(url)
    return Settings(
        data_dir=folder,
        database_url=url,
        broker_url="memory://",
        storage_url=(folder / "objects").as_uri(),
        base_model="tiny",
        rate_limit_per_second=0,
    )
