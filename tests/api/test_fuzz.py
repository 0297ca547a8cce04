"""Property-based fuzzing from the API's own OpenAPI document (schemathesis): whatever the
input, no 5xx and every response matches the schema. Bounded examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from core import auth
from core.db import make_engine, make_sessionmaker, session_scope, upgrade
from core.settings import Settings
from tests.helpers.db import bearer, throwaway_postgres
from tests.helpers.factories import make_concept, make_job

SETTINGS = Settings(broker_url="memory://", base_model="tiny", rate_limit_per_second=0)
# The operations must be known when the tests are collected, so the document comes from an
# app built then; creating it touches no file, database or server (its lifespan does, and
# never runs). The fixture serves the same app on a database and folder of its own.
# (schemathesis.pytest.from_fixture would defer it, but fails under pytest 9: no `_nodeid`.)
schema = schemathesis.openapi.from_dict(create_app(SETTINGS).openapi())
schema.location = "/openapi.json"
# What must hold for any input. Not "schema-valid data is accepted": random bytes pass the
# schema's `format: binary` but are no image, and a 422 naming the field is right for them.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str]]:
    """The app with a tenant's key and one real job (something besides random ids), in one
    lifespan for all calls."""
    with throwaway_postgres() as url:
        upgrade(url)
        engine = make_engine(url)
        with session_scope(make_sessionmaker(engine)) as s:
            _, key = auth.create_key(s, tenant=auth.get_or_create_tenant(s, "tests")[0])
            make_job(s, make_concept(s), kind="synthesize")
        engine.dispose()
        own = {"data_dir": tmp_path_factory.mktemp("fuzz"), "database_url": url}
        app = create_app(SETTINGS.model_copy(update=own))
        with TestClient(app):
            yield app, key


@schema.exclude(path_regex="/events$").parametrize()  # an endless stream for a queued job
@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(
    case: Any, served: tuple[FastAPI, str]
) -> None:
    app, key = served
    response = case.call(app=app, headers=bearer(key))
    case.validate_response(response, checks=CHECKS)
