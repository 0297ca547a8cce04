"""POST/GET/DELETE /v1/concepts against PostgreSQL and SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Artifact, Concept, Job
from core.settings import Settings

from .conftest import bearer
from .factories import blank_mask, make_concept, make_job, scene


def _post(client: TestClient, image: bytes, masks: list[bytes], **form: str):  # type: ignore[no-untyped-def]
    files = [("image", ("scene.png", image, "image/png"))]
    files += [("masks", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    return client.post("/v1/concepts", files=files, data=form)


def _nothing_stored(session: Session, settings: Settings) -> None:
    assert session.scalar(select(func.count()).select_from(Concept)) == 0
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    objects = Path(settings.data_dir) / "objects"
    assert not objects.exists() or not any(p.is_file() for p in objects.rglob("*"))


def test_create_stores_inputs_and_queues_a_learn_job(
    client: TestClient, session: Session, settings: Settings
) -> None:
    image, masks = scene()
    r = _post(client, image, masks, names="red box, blue disc", options='{"phase1_steps": 3}')
    assert r.status_code == 202, r.text
    body = r.json()
    concept, job = body["concept"], body["job"]
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert concept["status"] == "pending" and concept["base_model"] == "tiny"
    assert [t["token"] for t in concept["tokens"]] == ["<asset0>", "<asset1>"]
    assert [t["name"] for t in concept["tokens"]] == ["red box", "blue disc"]
    assert concept["options"] == {"phase1_steps": 3} and concept["learn_job_id"] == job["id"]
    assert (job["kind"], job["status"], job["concept_id"]) == ("learn", "queued", concept["id"])
    # The inputs are downloadable through the API (local storage).
    assert client.get(concept["inputs"]["image"]).content == image
    assert [client.get(u).content for u in concept["inputs"]["masks"]] == masks
    assert client.get(f"/v1/concepts/{concept['id']}").json()["id"] == concept["id"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ('{"phase1_steps": -1}', "options.phase1_steps"),
        ('{"no_such_field": 1}', "options.no_such_field"),
        ('{"seed": "x"}', "options.seed"),
        ('{"seed": 1180591620717411303424}', "options.seed"),
        ('{"resolution": 40000}', "options.resolution"),
        ('{"reward_steps": 1000000}', "options.reward_steps"),
        ('{"num_class_images": 100000}', "options.num_class_images"),
        (
            '{"diagnostic_timesteps": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}',
            "options.diagnostic_timesteps",
        ),
        ("[1, 2]", "options"),
        ("{not json", "options"),
    ],
)
def test_bad_options_are_422_naming_the_field(
    client: TestClient, session: Session, settings: Settings, options: str, field: str
) -> None:
    image, masks = scene()
    r = _post(client, image, masks, options=options)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["field"] == field and problem["fix"] and problem["type"].startswith("/problems/")
    _nothing_stored(session, settings)


def test_names_must_match_the_masks(
    client: TestClient, session: Session, settings: Settings
) -> None:
    image, masks = scene()
    r = _post(client, image, masks, names="only one")
    assert (r.status_code, r.json()["field"]) == (422, "names")
    _nothing_stored(session, settings)


def test_missing_masks_is_a_validation_problem(client: TestClient) -> None:
    image, _ = scene()
    r = client.post("/v1/concepts", files=[("image", ("s.png", image, "image/png"))])
    assert r.status_code == 422 and r.json()["field"] == "masks"


def test_empty_mask_is_422_naming_the_mask(
    client: TestClient, session: Session, settings: Settings
) -> None:
    image, masks = scene()
    r = _post(client, image, [masks[0], blank_mask()])
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["field"] == "masks[1]" and problem["fix"]
    _nothing_stored(session, settings)


def test_mask_of_another_size_is_422(
    client: TestClient, session: Session, settings: Settings
) -> None:
    image, masks = scene()
    _, small = scene(32)
    r = _post(client, image, [masks[0], small[1]])
    assert r.status_code == 422 and r.json()["field"] == "masks[1]"
    _nothing_stored(session, settings)


def test_unreadable_image_is_422(client: TestClient, session: Session, settings: Settings) -> None:
    _, masks = scene()
    r = _post(client, b"not an image", masks)
    assert r.status_code == 422 and r.json()["field"] == "image"
    _nothing_stored(session, settings)


def test_list_is_paginated_newest_first(client: TestClient, session: Session) -> None:
    made = [make_concept(session) for _ in range(3)]
    session.commit()
    page = client.get("/v1/concepts", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["data"]) == 2 and page["next"]
    rest = client.get(page["next"]).json()
    assert len(rest["data"]) == 1 and rest["next"] is None
    seen = {c["id"] for c in page["data"] + rest["data"]}
    assert seen == {str(c.id) for c in made}


def test_get_unknown_or_malformed_id(client: TestClient) -> None:
    r = client.get("/v1/concepts/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and r.json()["type"].endswith("/not_found")
    assert client.get("/v1/concepts/nope").json()["field"] == "concept_id"


def test_delete_cancels_jobs_and_removes_objects(
    client: TestClient, session: Session, settings: Settings
) -> None:
    image, masks = scene()
    created = _post(client, image, masks).json()
    cid, jid = created["concept"]["id"], created["job"]["id"]
    assert client.delete(f"/v1/concepts/{cid}").status_code == 204
    assert client.get(f"/v1/concepts/{cid}").status_code == 404
    job = client.get(f"/v1/jobs/{jid}").json()
    assert job["status"] == "canceled" and job["concept_id"] is None
    assert session.scalar(select(func.count()).select_from(Artifact)) == 0
    assert not any(p.is_file() for p in (Path(settings.data_dir) / "objects").rglob("*"))
    assert client.delete(f"/v1/concepts/{cid}").status_code == 404


def test_delete_asks_running_jobs_to_stop(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    running = make_job(session, concept, kind="synthesize", status="running")
    session.commit()
    assert client.delete(f"/v1/concepts/{concept.id}").status_code == 204
    job = client.get(f"/v1/jobs/{running.id}").json()
    assert job["status"] == "running" and job["cancel_requested"] is True


def test_options_round_trip_as_json(client: TestClient) -> None:
    image, masks = scene()
    opts = {"phase1_steps": 2, "phase2_steps": 1, "init_words": ["box", "disc"]}
    body = _post(client, image, masks, options=json.dumps(opts)).json()
    assert body["job"]["request"] == {"options": opts}


def test_files_over_the_limit_are_413(settings: Settings, session: Session, api_key: str) -> None:
    from api.main import create_app

    image, masks = scene()
    small = settings.model_copy(update={"max_upload_bytes": len(image) - 1})
    with TestClient(create_app(small), headers=bearer(api_key)) as client:
        r = _post(client, image, masks)
    assert (r.status_code, r.json()["field"]) == (413, "image")
    _nothing_stored(session, settings)


def test_broker_down_is_503_and_nothing_stays(
    settings: Settings, session: Session, api_key: str
) -> None:
    from api.main import create_app

    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    image, masks = scene()
    with TestClient(create_app(down), headers=bearer(api_key)) as client:
        r = _post(client, image, masks)
    assert r.status_code == 503 and r.json()["type"].endswith("/broker_unavailable")
    assert r.headers["retry-after"]
    _nothing_stored(session, settings)


def test_storage_failure_is_503_and_nothing_stays(
    api_key: str, settings: Settings, session: Session, tmp_path: Path
) -> None:
    from api.main import create_app

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    broken = settings.model_copy(update={"storage_url": blocker.as_uri()})
    image, masks = scene()
    with TestClient(create_app(broken), headers=bearer(api_key)) as client:
        r = _post(client, image, masks)
    assert r.status_code == 503 and r.json()["type"].endswith("/storage_unavailable")
    _nothing_stored(session, settings)


def test_storage_down_during_cleanup_still_answers_503(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.storage import StorageError

    def down(*args: object, **kwargs: object) -> None:
        raise StorageError("S3 unreachable: connection refused")

    storage = client.app.state.mifo.storage  # type: ignore[attr-defined]
    monkeypatch.setattr(storage, "put", down)
    monkeypatch.setattr(storage, "delete_prefix", down)
    image, masks = scene()
    r = _post(client, image, masks)
    assert r.status_code == 503 and r.json()["type"].endswith("/storage_unavailable")


def test_list_offset_is_bounded(client: TestClient) -> None:
    r = client.get("/v1/concepts", params={"offset": 2**63})
    assert r.status_code == 422
    assert client.get("/v1/concepts", params={"offset": 10**9}).status_code == 200
