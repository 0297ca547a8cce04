"""POST /v1/concepts/{id}/evaluations: an evaluation job end to end on the tiny models (the
base model and the feature models), and its refusals, each problem JSON naming its field."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.main import create_app
from core.engine import PAPER_PROMPTS
from core.models import Job
from core.settings import Settings
from tests.helpers.factories import make_concept
from tests.helpers.images import encode, make_scene
from worker.cache import ConceptCache
from worker.context import WorkerContext
from worker.runner import run_job

QUICK = '{"phase1_steps": 2, "phase2_steps": 1, "reward_steps": 1, "diagnostic_timesteps": [100]}'
METRICS = ("sim_c", "sim_d", "nsim_d", "cs")
TEMPLATE = "a photo of {token} at the beach"


@pytest.fixture(scope="module")
def base() -> Any:
    import mifo_engine as me

    return me.load_base_model("tiny", device="cpu")


def _evaluations(session: Session) -> int:
    session.expire_all()
    count = select(func.count()).select_from(Job).where(Job.kind == "evaluate")
    return session.scalar(count) or 0


def _post(client: TestClient, concept_id: Any, **body: Any):  # type: ignore[no-untyped-def]
    return client.post(f"/v1/concepts/{concept_id}/evaluations", json=body)


def _learned(client: TestClient, ctx: WorkerContext, base: Any, cache: ConceptCache) -> str:
    image, masks = make_scene()
    files = [("image", ("scene.png", encode(image), "image/png"))]
    files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
    r = client.post("/v1/concepts", files=files, data={"names": "left, right", "options": QUICK})
    assert r.status_code == 202, r.text
    assert run_job(ctx, uuid.UUID(r.json()["job"]["id"]), lambda: base, cache) == "succeeded"
    return str(r.json()["concept"]["id"])


def _png(client: TestClient, url: str) -> Image.Image:
    picture = Image.open(io.BytesIO(client.get(url).content))
    assert picture.format == "PNG"
    return picture


def test_an_evaluation_runs_and_its_result_holds_the_metrics_and_the_chart(
    client: TestClient, settings: Settings, base: Any
) -> None:
    ctx = WorkerContext.from_settings(settings.model_copy(update={"progress_interval": 0.05}))
    cache = ConceptCache(2)
    concept_id = _learned(client, ctx, base, cache)
    concept = client.get(f"/v1/concepts/{concept_id}").json()
    assert concept["links"]["evaluations"] == f"/v1/concepts/{concept_id}/evaluations"

    prompts = [TEMPLATE, "<asset0> next to <asset1>"]
    r = _post(client, concept_id, prompts=prompts, images_per_prompt=1, steps=2, seed=3)
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["kind"], job["status"], job["queue"]["position"]) == ("evaluate", "queued", 1)
    assert job["request"] == {
        "prompts": prompts,
        "images_per_prompt": 1,
        "steps": 2,
        "seed": 3,
        "syntheses": 3,  # the template once per instance, the other prompt once
        "images": 3,
    }
    assert run_job(ctx, uuid.UUID(job["id"]), lambda: base, cache) == "succeeded"
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["progress"]["phase"] == "evaluation" and done["progress"]["fraction"] == 1.0
    evaluation = done["result"]["evaluation"]
    assert [row["token"] for row in evaluation["rows"]] == ["<asset0>", "<asset1>"]
    assert [row["name"] for row in evaluation["rows"]] == ["left", "right"]
    for row in [*evaluation["rows"], evaluation["mean"]]:
        for metric in METRICS:
            assert isinstance(row[metric], float) and isinstance(row[f"{metric}_std"], float)
    assert evaluation["mean"]["token"] == "mean" and evaluation["mean"]["images"] == 4
    images = evaluation["images"]
    assert [i["prompt"] for i in images] == [
        "a photo of <asset0> at the beach",
        "a photo of <asset1> at the beach",
        "<asset0> next to <asset1>",
    ]
    assert images[2]["text"] == "left next to right" and images[2]["seed"] == 3
    assert set(images[2]["subjects"]) == {"<asset0>", "<asset1>"}
    assert set(images[2]["subjects"]["<asset0>"]) == {"sim_d", "nsim_d", "cs"}
    assert all(_png(client, i["url"]).size == (64, 64) for i in images)
    assert _png(client, evaluation["chart"]["url"]).width > 100
    saved = json.loads(client.get(evaluation["record"]["url"]).content)
    assert saved["rows"] == done["result"]["evaluation"]["rows"]
    assert evaluation["config"]["prompts"] == prompts
    assert evaluation["feature_models"]["clip"]["spec"] == "tiny"
    assert set(evaluation["references"]) == {"<asset0>", "<asset1>"}
    listed = client.get(f"/v1/concepts/{concept_id}/evaluations").json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    assert client.get("/v1/jobs", params={"kind": "evaluate"}).json()["total"] == 1
    _synthesis_with_metrics(client, ctx, base, cache, concept_id)


def _synthesis_with_metrics(
    client: TestClient, ctx: WorkerContext, base: Any, cache: ConceptCache, concept_id: str
) -> None:
    """`evaluate: true` on a synthesis: each image carries its metrics."""
    boxes = {"<asset0>": [0.05, 0.3, 0.45, 0.8], "<asset1>": [0.55, 0.3, 0.95, 0.8]}
    body = {"prompt": "<asset0> and <asset1>", "boxes": boxes, "steps": 2, "evaluate": True}
    synth = client.post(f"/v1/concepts/{concept_id}/syntheses", json=body).json()
    assert synth["request"]["evaluate"] is True
    assert run_job(ctx, uuid.UUID(synth["id"]), lambda: base, cache) == "succeeded"
    (image,) = client.get(f"/v1/jobs/{synth['id']}").json()["result"]["images"]
    metrics = image["metrics"]
    assert isinstance(metrics["sim_c"], float) and metrics["text"] == "left and right"
    assert set(metrics["subjects"]) == {"<asset0>", "<asset1>"}
    plain = {**body, "evaluate": False}
    synth = client.post(f"/v1/concepts/{concept_id}/syntheses", json=plain).json()
    assert run_job(ctx, uuid.UUID(synth["id"]), lambda: base, cache) == "succeeded"
    (image,) = client.get(f"/v1/jobs/{synth['id']}").json()["result"]["images"]
    assert image["metrics"] is None


def test_without_prompts_the_papers_ten_templates_are_asked_for(
    client: TestClient, session: Session
) -> None:
    concept = make_concept(session)
    session.commit()
    r = _post(client, concept.id)
    assert r.status_code == 202, r.text
    request = r.json()["request"]
    assert request["prompts"] == list(PAPER_PROMPTS)
    assert (request["images_per_prompt"], request["steps"], request["seed"]) == (2, 50, 0)
    assert (request["syntheses"], request["images"]) == (20, 40)  # 10 templates x 2 instances


def test_unknown_concept_is_404_and_a_pending_one_409(client: TestClient, session: Session) -> None:
    r = _post(client, uuid.uuid4(), prompts=[TEMPLATE])
    assert r.status_code == 404 and r.json()["type"] == "/problems/not_found", r.text
    pending = make_concept(session, status="pending")
    session.commit()
    r = _post(client, pending.id, prompts=[TEMPLATE])
    assert r.status_code == 409 and r.json()["type"] == "/problems/concept_not_ready", r.text
    assert r.json()["field"] == "concept_id" and "evaluate" in r.json()["fix"]
    assert _evaluations(session) == 0


@pytest.mark.parametrize(
    ("body", "field", "type_"),
    [
        ({"prompts": []}, "prompts", "validation_error"),
        ({"prompts": [TEMPLATE] * 21}, "prompts", "limit_exceeded"),
        ({"prompts": ["a photo of a dog"]}, "prompts", "invalid_config"),
        ({"prompts": ["a photo of <asset7>"]}, "prompts", "invalid_config"),
        ({"prompts": ["{token} and {token}"]}, "prompts", "invalid_config"),
        ({"prompts": ["   "]}, "prompts", "invalid_config"),
        ({"prompts": ["a\tphoto of {token}"]}, "prompts", "validation_error"),
        ({"prompts": ["{token} " + "x" * 500]}, "prompts[0]", "limit_exceeded"),
        ({"prompts": [TEMPLATE, 7]}, "prompts[1]", "validation_error"),
        ({"images_per_prompt": 9}, "images_per_prompt", "limit_exceeded"),
        ({"images_per_prompt": 0}, "images_per_prompt", "validation_error"),
        ({"images_per_prompt": "2"}, "images_per_prompt", "validation_error"),
        ({"steps": 151}, "steps", "limit_exceeded"),
        ({"seed": -1}, "seed", "validation_error"),
        ({"seed": 2**63 - 1}, "seed", "invalid_config"),
        ({"images_per_prompt": 5}, "images_per_prompt", "limit_exceeded"),  # 100 syntheses x 5
        ({"options": {}}, "options", "validation_error"),
    ],
)
def test_bad_requests_are_problems_naming_the_field(
    client: TestClient, session: Session, body: dict[str, Any], field: str, type_: str
) -> None:
    concept = make_concept(session)
    session.commit()
    if body == {"images_per_prompt": 5}:
        body = {"prompts": [TEMPLATE] * 20, "images_per_prompt": 5}  # 40 syntheses: 200 images
    r = _post(client, concept.id, **body)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["field"] == field and problem["type"] == f"/problems/{type_}", problem
    assert problem["fix"] and problem["detail"] and "Traceback" not in r.text
    assert _evaluations(session) == 0


def test_the_image_cap_is_the_servers_setting(
    settings: Settings, session: Session, api_key: str
) -> None:
    concept = make_concept(session)
    session.commit()
    capped = settings.model_copy(update={"max_evaluation_images": 3})
    headers = {"Authorization": f"Bearer {api_key}"}
    with TestClient(create_app(capped), headers=headers) as c:
        r = _post(c, concept.id, prompts=[TEMPLATE, "<asset0> and <asset1>"], images_per_prompt=1)
        assert r.status_code == 202, r.text
        r = _post(c, concept.id, prompts=[TEMPLATE, TEMPLATE], images_per_prompt=1)
    problem = r.json()
    assert r.status_code == 422 and problem["field"] == "prompts", problem
    assert "MIFO_MAX_EVALUATION_IMAGES" in problem["fix"] and "4 images" in problem["detail"]
