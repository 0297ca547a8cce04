"""POST /v1/concepts/{id}/syntheses: validation before anything is queued."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.main import create_app
from core.models import IdempotencyKey, Job
from core.settings import Settings
from tests.helpers.factories import make_concept
from tests.helpers.wait import wait_until

BOXES = {"<asset0>": [0.05, 0.3, 0.45, 0.8], "<asset1>": [0.55, 0.3, 0.95, 0.8]}
PROMPT = "a photo of <asset0> and <asset1> at the beach"


def _post(client: TestClient, concept_id: Any, **body: Any):  # type: ignore[no-untyped-def]
    return client.post(
        f"/v1/concepts/{concept_id}/syntheses", json={"prompt": PROMPT, "boxes": BOXES} | body
    )


def _jobs(session: Session) -> int:
    session.expire_all()
    return (
        session.scalar(select(func.count()).select_from(Job).where(Job.kind == "synthesize")) or 0
    )


def test_queues_a_job_with_normalised_boxes(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    session.commit()
    boxes = {"red box": BOXES["<asset0>"], "<asset1>": BOXES["<asset1>"]}  # names work too
    r = _post(client, concept.id, boxes=boxes, num_images=2, seed=7, steps=4)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["kind"], job["status"]) == ("synthesize", "queued")
    assert job["request"]["boxes"] == BOXES
    assert job["request"]["config"]["num_images"] == 2 and job["request"]["seeds"] == [7, 8]


def test_not_ready_is_409(client: TestClient, session: Session) -> None:
    concept = make_concept(session, status="pending")
    session.commit()
    r = _post(client, concept.id)
    assert r.status_code == 409 and r.json()["type"].endswith("/concept_not_ready")
    assert _jobs(session) == 0


def test_unknown_concept_is_404(client: TestClient) -> None:
    assert _post(client, "00000000-0000-0000-0000-000000000000").status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"boxes": {"<asset7>": [0.1, 0.1, 0.5, 0.5]}}, "boxes[<asset7>]"),
        ({"boxes": {"<asset0>": [0.5, 0.1, 0.2, 0.5]}}, "boxes[<asset0>]"),
        ({"boxes": {"<asset0>": [0.1, 0.1, 1.5, 0.5]}}, "boxes[<asset0>]"),
        ({"prompt": "a photo of <asset3>"}, "prompt"),
        ({"prompt": "a photo of <asset0>"}, "boxes[<asset1>]"),
        ({"boxes": {"<asset0>": [0.1, 0.2, 0.3]}}, "boxes[<asset0>]"),
        ({"steps": 0}, "steps"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"options": {"max_guidance_iters": 0}}, "options.max_guidance_iters"),
        ({"options": {"max_guidance_iters": 1000}}, "options.max_guidance_iters"),
        ({"options": {"kmeans_iters": 10**6}}, "options.kmeans_iters"),
        ({"options": {"kmeans_inits": 1000}}, "options.kmeans_inits"),
        ({"options": {"nonsense": 1}}, "options.nonsense"),
        ({"options": {"seed": 1}}, "options.seed"),
        ({"seed": 2**70}, "seed"),
        ({"options": {"seeds": [2**70]}}, "options.seeds"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_requests_are_422_naming_the_field(
    client: TestClient, session: Session, change: dict[str, Any], field: str
) -> None:
    concept = make_concept(session)
    session.commit()
    r = _post(client, concept.id, **change)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["field"] == field, problem
    assert problem["fix"] and problem["detail"] and "Traceback" not in r.text
    assert _jobs(session) == 0


def test_the_tokenizer_loads_at_start_up_not_in_the_first_request(
    settings: Settings, session: Session, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    from api.http import state as api_state

    api_state._cached_tokenizer.cache_clear()
    with TestClient(create_app(settings)):
        loaded = api_state._cached_tokenizer.cache_info
        wait_until(lambda: loaded().currsize, 60, "the tokenizer was never loaded")
    # A base model whose tokenizer cannot be loaded does not stop the API from starting;
    # the request that needs it answers with the reason.
    broken = settings.model_copy(update={"base_model": str(settings.data_dir / "no-such-model")})
    concept = make_concept(session)
    session.commit()
    app = create_app(broken)
    with caplog.at_level(logging.WARNING, logger="mifo"), TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        wait_until(lambda: "not loaded at start-up" in caplog.text, 60, caplog.text)
        r = c.post(
            f"/v1/concepts/{concept.id}/syntheses",
            json={"prompt": PROMPT, "boxes": BOXES},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        problem = r.json()
        assert r.status_code == 503 and problem["type"] == "/problems/model_unavailable"
        assert "MIFO_BASE_MODEL" in problem["fix"] and r.headers["retry-after"] == "30"
    assert _jobs(session) == 0  # nothing was queued


def test_a_concept_deleted_while_the_job_is_created_is_404(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DELETE that commits between the concept read and the job insert: 404, as if it
    had never been there; no job, and the Idempotency-Key is free again."""
    from core import submissions
    from core.models import IdempotencyKey

    concept = make_concept(session)
    session.commit()
    checked = submissions.check_capacity

    def deleted_meanwhile(*a: Any, **k: Any) -> None:
        assert client.delete(f"/v1/concepts/{concept.id}").status_code == 204
        checked(*a, **k)

    monkeypatch.setattr(submissions, "check_capacity", deleted_meanwhile)
    r = client.post(
        f"/v1/concepts/{concept.id}/syntheses",
        json={"prompt": PROMPT, "boxes": BOXES},
        headers={"Idempotency-Key": "gone"},
    )
    missing = _post(client, "00000000-0000-0000-0000-000000000000")
    assert r.status_code == missing.status_code == 404, r.text
    assert r.json()["type"] == missing.json()["type"] == "/problems/not_found"
    assert r.headers["content-type"] == "application/problem+json"
    assert _jobs(session) == 0
    assert session.scalar(select(func.count()).select_from(IdempotencyKey)) == 0


def _waiting_for_a_lock(url: str) -> bool:
    """Some statement on this PostgreSQL database waits for a row lock."""
    import psycopg

    with psycopg.connect(url.replace("+psycopg", "", 1), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


def test_a_concept_deleted_at_the_job_insert(
    client: TestClient, settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite has no row lock: the insert fails on the foreign key and answers 404 too.
    PostgreSQL keeps the concept locked: the DELETE waits, then cancels the new job."""
    import threading

    from core import jobs
    from core.models import Concept

    concept_id = make_concept(session).id
    session.commit()
    create = jobs.create_job
    deletes: list[int] = []

    def delete() -> None:
        deletes.append(client.delete(f"/v1/concepts/{concept_id}").status_code)

    waiter = threading.Thread(target=delete)
    sqlite = settings.db_url.startswith("sqlite")

    def deleted_at_insert(*a: Any, **k: Any) -> Job:
        if sqlite:
            delete()
        else:
            waiter.start()  # blocks on the concept's lock until this request commits
            wait_until(lambda: _waiting_for_a_lock(settings.db_url), 10, "the DELETE never waited")
        return create(*a, **k)

    monkeypatch.setattr(jobs, "create_job", deleted_at_insert)
    r = _post(client, concept_id)
    if not sqlite:
        waiter.join(10)
    assert deletes == [204]
    session.expire_all()
    assert session.scalar(select(Concept.id).where(Concept.id == concept_id)) is None
    if sqlite:
        assert r.status_code == 404 and r.json()["type"] == "/problems/not_found", r.text
        assert _jobs(session) == 0
    else:
        assert r.status_code == 202, r.text
        assert client.get(f"/v1/jobs/{r.json()['id']}").json()["status"] == "canceled"


@pytest.mark.parametrize(
    ("member", "field"),
    [
        ('"options": {"eta": NaN}', "options.eta"),
        ('"options": {"alpha_max": Infinity}', "options.alpha_max"),
        ('"options": {"loss_threshold": -Infinity}', "options.loss_threshold"),
        ('"options": {"ca_mask_offset": 1e999}', "options.ca_mask_offset"),
        ('"guidance_scale": NaN', "guidance_scale"),
        (
            '"boxes": {"<asset0>": [NaN, 0.3, 0.45, 0.8], "<asset1>": [0.55, 0.3, 0.95, 0.8]}',
            "boxes.<asset0>[0]",
        ),
    ],
)
def test_non_finite_numbers_are_422_naming_the_field(
    client: TestClient, session: Session, member: str, field: str
) -> None:
    """Python's JSON parser takes NaN and Infinity (and 1e999 as infinity); JSON has neither,
    and PostgreSQL's json column refuses them."""
    concept = make_concept(session)
    session.commit()
    body = json.dumps({"prompt": PROMPT, "boxes": BOXES})[:-1] + ", " + member + "}"
    r = client.post(
        f"/v1/concepts/{concept.id}/syntheses",
        content=body,
        headers={"content-type": "application/json", "Idempotency-Key": "non-finite"},
    )
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["field"] == field and "finite" in problem["detail"] + problem["fix"], problem
    assert _jobs(session) == 0
    assert session.scalar(select(func.count()).select_from(IdempotencyKey)) == 0


def test_whole_numbers_are_numbers_in_boxes(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    session.commit()
    boxes = {"<asset0>": [0, 0, 1, 1], "<asset1>": [0, 0, 1, 1]}
    assert _post(client, concept.id, boxes=boxes, guidance_scale=7).status_code == 202


@pytest.mark.parametrize(
    ("body", "field", "wanted"),
    [
        ({"box_control": "no"}, "box_control", "true or false"),
        ({"boxes": {"<asset0>": "0.1, 0.2, 0.5, 0.6"}}, "boxes.<asset0>", "a JSON array"),
        ({"boxes": {"<asset0>": ["0.1", 0.2, 0.5, 0.6]}}, "boxes.<asset0>[0]", "a number"),
        ({"seed": "7"}, "seed", "a whole number"),
        ({"steps": 4.0}, "steps", "a whole number"),
        ({"prompt": 12}, "prompt", "a string"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(
    client: TestClient, session: Session, body: dict[str, Any], field: str, wanted: str
) -> None:
    """The JSON body is strict: nothing is coerced ("no" is not false, "7" is not 7)."""
    concept = make_concept(session)
    session.commit()
    r = _post(client, concept.id, **body)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["field"] == field and wanted in problem["fix"], problem
    assert _jobs(session) == 0
