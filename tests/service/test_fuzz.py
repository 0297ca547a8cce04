"""Property-based fuzzing from the API's own OpenAPI document (schemathesis): whatever the
input, no 5xx and every response matches the schema. Bounded examples per operation."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
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

from .conftest import PG_ADMIN, bearer
from .factories import make_concept, make_job

# The app must exist when the tests are collected (the schema comes from it); its database
# is created only when the tests run.
_DB = f"mifo_fuzz_{uuid.uuid4().hex[:12]}"
_URL = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + "/" + _DB
SETTINGS = Settings(
    data_dir=Path(tempfile.mkdtemp(prefix="mifo-fuzz-")), database_url=_URL,
    broker_url="memory://", base_model="tiny", rate_limit_per_second=0,
)  # fmt: skip
APP = create_app(SETTINGS)
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app, schema.location = APP, "/openapi.json"
KEY: dict[str, Any] = {}
# What must hold for any input. Not "schema-valid data is accepted": random bytes pass the
# schema's `format: binary` but are no image, and a 422 naming the field is right for them.
CHECKS = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_schema_conformance,
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def running_app() -> Iterator[None]:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{_DB}"')
    try:
        upgrade(_URL)
        engine = make_engine(_URL)
        with session_scope(make_sessionmaker(engine)) as s:
            _, KEY["key"] = auth.create_key(s, tenant=auth.get_or_create_tenant(s, "tests")[0])
            make_job(s, make_concept(s), kind="synthesize")  # something real besides random ids
        engine.dispose()
        with TestClient(APP) as client:  # one lifespan for all calls
            KEY["client"] = client
            yield
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{_DB}" WITH (FORCE)')


@schema.exclude(path_regex="/events$").parametrize()  # an endless stream for a queued job
@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_no_server_errors_and_responses_match_the_schema(case: Any) -> None:
    response = case.call(session=KEY["client"], headers=bearer(KEY["key"]))
    case.validate_response(response, checks=CHECKS)
