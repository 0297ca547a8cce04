"""Rough edges a newcomer hits: the concept's syntheses link answers GET, plain generation
needs no boxes, one limit for num_images, a failed concept says why, a concept of another
base model is refused at request time, limit messages read cleanly, and a body of the
wrong content type is told which one to send; the API docs work offline."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from core import concepts, jobs
from core.models import Concept
from tests.helpers.factories import LEASE, make_concept, make_job

BOXES = {"<asset0>": [0.05, 0.3, 0.45, 0.8], "<asset1>": [0.55, 0.3, 0.95, 0.8]}
PROMPT = "a photo of <asset0> and <asset1>"


def test_a_concepts_syntheses_link_lists_its_syntheses(
    client: TestClient, session: Session
) -> None:
    concept, other = make_concept(session), make_concept(session)
    session.commit()
    url = client.get(f"/v1/concepts/{concept.id}").json()["links"]["syntheses"]
    made = [
        client.post(url, json={"prompt": PROMPT, "boxes": BOXES}).json()["id"] for _ in range(3)
    ]
    client.post(f"/v1/concepts/{other.id}/syntheses", json={"prompt": PROMPT, "boxes": BOXES})
    page = client.get(url, params={"limit": 2})
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["total"] == 3 and [j["id"] for j in body["data"]] == made[::-1][:2]
    assert body["next"] and client.get(body["next"]).json()["data"][0]["id"] == made[0]
    assert client.get(f"/v1/concepts/{other.id}/syntheses").json()["total"] == 1
    missing = client.get("/v1/concepts/00000000-0000-0000-0000-000000000000/syntheses")
    assert missing.status_code == 404


def test_plain_generation_needs_no_boxes(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    session.commit()
    r = client.post(f"/v1/concepts/{concept.id}/syntheses", json={"prompt": "a beach"})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    ("field", "values", "limit", "setting"),
    [
        ("num_images", (9, 16, 17), 8, "MIFO_MAX_IMAGES_PER_SYNTHESIS"),
        ("steps", (151, 1000, 1001, 10**6), 150, "MIFO_MAX_SYNTHESIS_STEPS"),
        ("prompt", (501, 2001), 500, "MIFO_MAX_PROMPT_CHARS"),  # its length in characters
    ],
)
def test_each_synthesis_limit_is_the_servers_alone(
    client: TestClient,
    session: Session,
    field: str,
    values: tuple[int, ...],
    limit: int,
    setting: str,
) -> None:
    """One limit and one message per field, also past where the schema had maxima of its
    own (16 images, 1000 steps, 2000 characters)."""
    concept = make_concept(session)
    session.commit()
    url = f"/v1/concepts/{concept.id}/syntheses"
    for value in values:
        sent = PROMPT + "x" * (value - len(PROMPT)) if field == "prompt" else value
        r = client.post(url, json={"prompt": PROMPT, "boxes": BOXES, field: sent})
        assert r.status_code == 422 and r.json()["field"] == field, r.text
        what = " characters" if field == "prompt" else ""
        assert (
            r.json()["detail"] == f"{field} is {value}{what}; this server allows at most {limit}."
        )
        assert setting in r.json()["fix"]


def test_a_failed_concept_carries_its_jobs_error(client: TestClient, session: Session) -> None:
    concept = make_concept(session, status="pending")
    job = make_job(session, concept)
    session.commit()
    jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    jobs.finish(
        session, job_id=job.id, status="failed", error_type="empty_mask", error_message="Mask 1."
    )
    concepts.settle(session, job.id, "failed")
    session.commit()
    body = client.get(f"/v1/concepts/{concept.id}").json()
    assert body["status"] == "failed"
    assert body["error"] == {"type": "empty_mask", "message": "Mask 1."}
    listed = client.get("/v1/concepts").json()["data"][0]
    assert listed["error"]["type"] == "empty_mask"


def test_a_ready_concept_has_no_error(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    session.commit()
    assert client.get(f"/v1/concepts/{concept.id}").json()["error"] is None


def test_a_concept_of_another_base_model_is_409_naming_both(
    client: TestClient, session: Session
) -> None:
    concept = make_concept(session)
    session.get(Concept, concept.id).base_model = "someone/sd21@abc"  # type: ignore[union-attr]
    session.commit()
    r = client.post(f"/v1/concepts/{concept.id}/syntheses", json={"prompt": PROMPT, "boxes": BOXES})
    assert r.status_code == 409 and r.json()["type"].endswith("/base_model_mismatch")
    assert "'someone/sd21@abc'" in r.json()["detail"] and "'tiny'" in r.json()["detail"]
    assert client.get("/v1/jobs").json()["total"] == 0


def test_a_steps_limit_message_reads_cleanly(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    session.commit()
    body = {"prompt": PROMPT, "boxes": BOXES, "steps": 1000}
    r = client.post(f"/v1/concepts/{concept.id}/syntheses", json=body)
    assert r.json()["detail"] == "steps is 1000; this server allows at most 150."


def test_a_body_of_the_wrong_content_type_is_told_which_one_to_send(
    client: TestClient, session: Session
) -> None:
    concept = make_concept(session)
    session.commit()
    as_json = client.post("/v1/concepts", json={"image": "scene.png", "masks": ["a.png"]})
    assert as_json.status_code == 415, as_json.text
    body = as_json.json()
    assert body["type"].endswith("/unsupported_media_type") and body["field"] == "Content-Type"
    assert "multipart/form-data" in body["detail"] and "application/json" in body["detail"]
    assert "image" in body["fix"] and "masks" in body["fix"]
    url = f"/v1/concepts/{concept.id}/syntheses"
    as_form = client.post(url, data={"prompt": PROMPT})
    assert as_form.status_code == 415, as_form.text
    body = as_form.json()
    assert body["field"] == "Content-Type" and "application/json" in body["fix"]
    assert "application/x-www-form-urlencoded" in body["detail"]
    odd = client.post(url, content=b'{"prompt": "x"}', headers={"content-type": "text/x+json"})
    assert odd.status_code == 415, odd.text  # only application/*+json is JSON to FastAPI
    vendor = {"content-type": "application/vnd.example+json"}
    assert client.post(url, content=b"{}", headers=vendor).json()["field"] == "prompt"
    # The right type with a wrong field still names the field, and nothing was queued.
    wrong = client.post(url, json={"prompt": PROMPT, "num_images": 0})
    assert wrong.status_code == 422 and wrong.json()["field"] == "num_images"
    assert client.get(url).json()["total"] == 0


def test_the_api_docs_load_nothing_from_another_host(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)["']""", html.text)
        assert urls and all(u.startswith("/") for u in urls), (page, urls)
        for url in urls:
            asset = client.get(url)
            assert asset.status_code == 200 and asset.content, (page, url)
    assert "SwaggerUIBundle" in client.get("/docs-assets/swagger-ui-bundle.js").text
    assert client.get("/openapi.json").json()["info"]["title"] == "MIFO"


def test_415_is_documented_where_a_body_is_read_and_only_there(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method, op in operations.items():
            reads_body = "requestBody" in op
            assert ("415" in op["responses"]) == reads_body, (method, path)
