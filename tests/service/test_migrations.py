"""Migrations: upgrade from empty and back on PostgreSQL; models match the history."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from api.main import create_app
from core.db import NotMigrated, check_migrated, downgrade, make_engine, upgrade
from core.models import Base
from core.settings import Settings

from .conftest import throwaway_postgres

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"alembic_version", "artifacts", "concepts", "jobs"}


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


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_models_match_migrations(request: pytest.FixtureRequest, backend: str) -> None:
    engine = make_engine(request.getfixturevalue(f"{backend}_url"))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)  # fmt: skip
    engine.dispose()
    assert diff == []


def test_api_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="memory://", base_model="tiny")
    with pytest.raises(NotMigrated, match="mifo migrate"), TestClient(create_app(settings)):
        pass


def test_mifo_commands_refuse_then_migrate(tmp_path: Path) -> None:
    env = {"MIFO_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-c", "import sys, core.cli, argparse; p = argparse.ArgumentParser(); "
           "core.cli.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); "
           "sys.exit(a.func(a))"]  # fmt: skip
    refused = subprocess.run([*cli, "worker"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "Run `mifo migrate`" in refused.stderr
    done = subprocess.run([*cli, "migrate"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    check_migrated(make_engine(f"sqlite:///{tmp_path / 'mifo.db'}"))
