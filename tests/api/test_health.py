"""Health, readiness, metrics, OpenAPI and error rendering."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.orm import Session

from api.main import create_app
from core import jobs
from core.settings import Settings
from tests.helpers.factories import LEASE, lose_worker, make_concept, make_job


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "storage": "ok",
        "base_model": "ok",
    }


def test_an_unloadable_base_model_is_not_ready_and_refuses_jobs(
    settings: Settings, tmp_path: Path, api_key: str
) -> None:
    """The API counts prompt tokens without the weights; readiness checks the weights too."""
    from tests.helpers.db import bearer
    from tests.helpers.images import encode, make_scene

    folder = tmp_path / "sd21"
    (folder / "tokenizer").mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):  # enough for the tokenizer, not for a worker
        (folder / "tokenizer" / name).write_text("{}" if name.endswith("json") else "")
    broken = settings.model_copy(update={"base_model": str(folder)})
    with TestClient(create_app(broken), headers=bearer(api_key)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        checks = r.json()["checks"]
        assert checks["database"] == "ok" and checks["base_model"].startswith("error")
        assert "unet/config.json" in checks["base_model"]
        image, masks = make_scene()
        files = [("image", ("s.png", encode(image), "image/png"))]
        files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
        r = client.post("/v1/concepts", files=files)
        assert r.status_code == 503 and r.json()["type"].endswith("/model_unavailable")
        assert client.get("/v1/concepts").json()["total"] == 0  # nothing was stored


def test_a_model_whose_config_lacks_its_size_is_not_ready_and_refuses_uploads(
    settings: Settings, tmp_path: Path, api_key: str
) -> None:
    """Uploads are checked at the model's own size: readiness reads it as they do."""
    from mifo_engine.models import load_base_model, save_base_model
    from tests.helpers.db import bearer
    from tests.helpers.images import encode, make_scene

    folder = save_base_model(load_base_model("tiny"), tmp_path / "model")
    config = json.loads((folder / "unet" / "config.json").read_text())
    del config["sample_size"]
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    broken = settings.model_copy(update={"base_model": str(folder)})
    with TestClient(create_app(broken), headers=bearer(api_key)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert "does not give the model's size" in r.json()["checks"]["base_model"]
        image, masks = make_scene()
        files = [("image", ("s.png", encode(image), "image/png"))]
        files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
        r = client.post("/v1/concepts", files=files)
        assert r.status_code == 503 and r.json()["type"].endswith("/model_unavailable")
        assert client.get("/v1/concepts").json()["total"] == 0


def test_readyz_is_503_when_storage_is_unreachable(settings: Settings, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    broken = settings.model_copy(update={"storage_url": (blocker / "objects").as_uri()})
    with TestClient(create_app(broken)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert (
        r.json()["checks"]["storage"].startswith("error") and r.json()["checks"]["database"] == "ok"
    )


def test_readyz_is_503_when_the_broker_is_down(settings: Settings) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["broker"].startswith("error")


def test_metrics_count_jobs_and_durations(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    make_job(session, concept)
    job = make_job(session, concept, kind="synthesize")
    jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    lose_worker(session, job.id)  # its first run lost its worker: one lost run
    jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    jobs.finish(session, job_id=job.id, status="succeeded", result={})
    session.commit()
    text = client.get("/metrics").text
    assert 'mifo_job_lost_runs{kind="synthesize"} 1.0' in text
    assert 'mifo_job_lost_runs{kind="learn"} 0.0' in text
    assert 'mifo_jobs{kind="learn",status="queued"} 1.0' in text
    assert 'mifo_jobs{kind="synthesize",status="succeeded"} 1.0' in text
    assert 'mifo_queue_depth{queue="learn"}' in text
    assert 'mifo_job_duration_seconds_count{kind="synthesize",status="succeeded"} 1.0' in text
    assert (
        'mifo_job_duration_seconds_bucket{kind="synthesize",le="+Inf",status="succeeded"} 1.0'
        in text
    )


def test_every_route_documents_examples_and_problems(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            assert op.get("summary") and op.get("description"), (method, path)
            if path.startswith("/v1/"):
                assert "404" in op["responses"] or "422" in op["responses"], (method, path)
    schemas = spec["components"]["schemas"]
    for name in ("ConceptPublic", "JobPublic", "SynthesisCreate"):
        assert schemas[name].get("examples"), name


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = client.put("/v1/concepts")
    assert r.status_code == 405 and r.json()["type"].endswith("/method_not_allowed")


def test_unexpected_errors_are_500_problems_without_traceback(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500 and r.json()["type"].endswith("/internal_error")
    assert "secret" not in r.text and "Traceback" not in r.text


def test_metrics_token_protects_metrics_only(settings: Settings) -> None:
    guarded = settings.model_copy(update={"metrics_token": SecretStr("scrape-me")})
    with TestClient(create_app(guarded)) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-me"}):
            r = c.get("/metrics", headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["field"] == "Authorization" and "MIFO_METRICS_TOKEN" in r.json()["fix"]
        ok = c.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert ok.status_code == 200 and "mifo_jobs" in ok.text
        assert c.get("/healthz").status_code == 200  # probes stay open


def test_probes_and_posts_log_nothing_that_repeats_on_every_request(
    client: TestClient, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    """No migration-context lines on each readiness check, no broker URL warning per job."""
    concept = make_concept(session)
    session.commit()
    body = {"prompt": "a photo of <asset0> and <asset1>", "boxes": {}}
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            assert client.get("/readyz").status_code == 200
            assert client.post(f"/v1/concepts/{concept.id}/syntheses", json=body).status_code == 202
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if m.startswith(("Context impl", "Will assume"))], said
    assert not [m for m in said if "No hostname was supplied" in m], said
