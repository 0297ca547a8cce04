"""Migrations: upgrade from empty and back on PostgreSQL; models match the history."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from api.main import create_app
from core.db import NotMigrated, check_migrated, downgrade, make_engine, upgrade
from core.models import Base
from core.settings import Settings
from tests.helpers.db import throwaway_postgres

ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "alembic_version",
    "artifacts",
    "concepts",
    "jobs",
    "tenants",
    "api_keys",
    "idempotency_keys",
    "webhook_deliveries",
    "webhook_attempts",
    "storage_cleanups",
    "segment_images",
}


def test_postgres_upgrade_from_empty_and_downgrade_back() -> None:
    with throwaway_postgres() as url:
        engine = make_engine(url)
        with pytest.raises(NotMigrated, match="mifo migrate"):
            check_migrated(engine)
        upgrade(url)
        assert set(inspect(engine).get_table_names()) == TABLES
        check_migrated(engine)
        downgrade(url, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade(url)
        check_migrated(engine)
        engine.dispose()


def test_rows_from_before_tenants_go_to_a_default_tenant(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO concepts (id, status, base_model, names, options, width, height, "
                "created_at, updated_at) VALUES ('0b7d5a523c6e4f1a8e0f5d2f7f9c4e21', 'ready', 'tiny', "
                "'[]', '{}', 64, 64, '2025-01-01', '2025-01-01')"
            )
        )
    upgrade(url)
    with engine.connect() as conn:
        tenant = conn.execute(text("SELECT id, name FROM tenants")).one()
        owner = conn.execute(text("SELECT tenant_id FROM concepts")).scalar_one()
    engine.dispose()
    assert tenant.name == "default" and owner == tenant.id


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrades_and_downgrades_keep_related_rows(backend: str, tmp_path: Path) -> None:
    """SQLite's batch mode re-creates tables: the rows pointing at them must survive (their
    ON DELETE actions must not fire), in both directions."""
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'rows.db'}"
        else:
            url = stack.enter_context(throwaway_postgres())
        upgrade(url, "0002")
        engine = make_engine(url)
        ids = {name: uuid.uuid4().hex for name in ("tenant", "concept", "job", "art", "hook")}
        with engine.begin() as conn:
            for sql in (
                "INSERT INTO tenants (id, name, webhook_secret, created_at) "
                "VALUES (:tenant, 't', 's', '2025-01-01')",
                "INSERT INTO concepts (id, tenant_id, status, base_model, names, options, width, "
                "height, created_at, updated_at) VALUES (:concept, :tenant, 'ready', 'tiny', "
                "'[]', '{}', 64, 64, '2025-01-01', '2025-01-01')",
                "INSERT INTO jobs (id, tenant_id, kind, status, concept_id, params, "
                "cancel_requested, attempts, created_at, updated_at) VALUES (:job, :tenant, "
                "'learn', 'succeeded', :concept, '{}', false, 1, '2025-01-01', '2025-01-01')",
                "INSERT INTO artifacts (id, concept_id, job_id, kind, position, key, content_type, "
                "size, created_at) VALUES (:art, :concept, :job, 'input', 0, 'k', 'image/png', 1, "
                "'2025-01-01')",
                "INSERT INTO webhook_deliveries (id, tenant_id, job_id, event, url, payload, "
                "status, attempts, next_attempt_at, created_at) VALUES (:hook, :tenant, "
                ":job, 'job.completed', 'https://x.example/', '{}', 'delivered', 1, "
                "'2025-01-01', '2025-01-01')",
            ):
                conn.execute(text(sql), ids)

        def related() -> tuple:
            with engine.connect() as conn:
                return (
                    conn.execute(
                        text("SELECT count(*) FROM artifacts WHERE job_id IS NOT NULL")
                    ).scalar_one(),
                    conn.execute(
                        text("SELECT count(*) FROM jobs WHERE concept_id IS NOT NULL")
                    ).scalar_one(),
                    conn.execute(text("SELECT count(*) FROM webhook_deliveries")).scalar_one(),
                )

        assert related() == (1, 1, 1)
        upgrade(url)
        assert related() == (1, 1, 1)
        with engine.connect() as conn:  # jobs from before were sent when they were created
            assert conn.execute(text("SELECT enqueued_at FROM jobs")).scalar_one() is not None
        downgrade(url, "0002")
        assert related() == (1, 1, 1)
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_going_below_segmentations_removes_their_jobs_and_keeps_the_rest(
    backend: str, tmp_path: Path
) -> None:
    """The release before 0006 knows no `segment` kind: its jobs go with the tables."""
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'segment.db'}"
        else:
            url = stack.enter_context(throwaway_postgres())
        upgrade(url)
        engine = make_engine(url)
        ids = {name: uuid.uuid4().hex for name in ("tenant", "learn", "segment")}
        job = (
            "INSERT INTO jobs (id, tenant_id, kind, status, params, cancel_requested, attempts, "
            "losses, created_at, updated_at) VALUES (:{0}, :tenant, '{0}', 'succeeded', '{{}}', "
            "false, 1, 0, '2025-01-01', '2025-01-01')"
        )
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tenants (id, name, webhook_secret, created_at) "
                    "VALUES (:tenant, 't', 's', '2025-01-01')"
                ),
                ids,
            )
            for kind in ("learn", "segment"):
                conn.execute(text(job.format(kind)), ids)
        downgrade(url, "0005")
        with engine.connect() as conn:
            kinds = conn.execute(text("SELECT kind FROM jobs")).scalars().all()
        engine.dispose()
        assert kinds == ["learn"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_models_match_migrations(request: pytest.FixtureRequest, backend: str) -> None:
    engine = make_engine(request.getfixturevalue(f"{backend}_url"))
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    engine.dispose()
    assert diff == []


def test_api_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="memory://", base_model="tiny")
    with pytest.raises(NotMigrated, match="mifo migrate"), TestClient(create_app(settings)):
        pass


def test_mifo_commands_refuse_then_migrate(tmp_path: Path) -> None:
    env = {"MIFO_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    cli = [
        sys.executable,
        "-c",
        "import sys, mifo_cli.service as s, argparse; "
        "p = argparse.ArgumentParser(); s.register(p.add_subparsers()); "
        "a = p.parse_args(sys.argv[1:]); "
        "sys.exit(a.func(a))",
    ]
    refused = subprocess.run([*cli, "worker"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "Run `mifo migrate`" in refused.stderr
    done = subprocess.run([*cli, "migrate"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    check_migrated(make_engine(f"sqlite:///{tmp_path / 'mifo.db'}"))
