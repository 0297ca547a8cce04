"""POST /v1/segmentations end to end with the tiny SAM: clicks in, masks out under
`Prefer: wait` (a worker thread runs the real runner), the next click on the image by its
`image_id` reusing the embedding, proposals, the masks taken by a learning request like
painted ones, and every bad input refused as problem JSON naming the field, with nothing
stored."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import events
from core.db import make_engine, make_sessionmaker
from core.models import Job, SegmentImage
from core.settings import Settings
from tests.helpers.db import bearer, new_key
from tests.helpers.images import encode, make_scene
from tests.helpers.serve import QUICK
from tests.helpers.wait import wait_until
from worker import segmentation
from worker.cache import ConceptCache
from worker.context import WorkerContext
from worker.runner import run_job

# make_scene(): a 96 x 80 image with a blob around (30, 40) and one around (66, 40).
CLICKS = [{"points": [[30, 40]]}, {"points": [[66, 40], [30, 40]], "labels": [1, 0]}]
LOOSE = {"points_per_side": 4, "min_predicted_iou": 0, "min_stability": 0, "max_proposals": 3}


@pytest.fixture(scope="module", autouse=True)
def _sam_imported() -> None:
    """transformers imports lazily and not thread-safely: SAM's classes are imported here,
    before an app's start-up thread loads its tokenizer while a worker loads SAM."""
    from mifo_engine.sam import build_tiny_sam

    build_tiny_sam()


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "POLL_SECONDS", 0.05)  # no Redis here: waits poll the row


@pytest.fixture
def worker(settings: Settings) -> Iterator[WorkerContext]:
    """A worker thread running every queued job with the real runner (segmentations on the
    tiny SAM; a learning job on the tiny base model)."""
    ctx = WorkerContext.from_settings(settings.model_copy(update={"segment_model": "tiny"}))
    segmentation.segmenter(ctx.settings).clear_cache()  # the process keeps it between tests
    stop = threading.Event()
    sessions = make_sessionmaker(make_engine(settings.db_url))

    def base() -> Any:
        import mifo_engine as me

        return me.load_base_model("tiny", device="cpu")

    def run() -> None:
        cache = ConceptCache(1)
        while not stop.is_set():
            with sessions() as s:
                queued = s.scalars(select(Job.id).where(Job.status == "queued")).all()
            for job_id in queued:
                run_job(ctx, job_id, base, cache)
            stop.wait(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield ctx
    stop.set()
    thread.join(30)


def _scene() -> bytes:
    return encode(make_scene()[0])


def _segment(client: TestClient, wait: int | None = 30, **form: Any) -> Any:
    """POST /v1/segmentations as multipart (a field without a file too, as clients send it)."""
    image = form.pop("image", None)
    parts: list[tuple[str, Any]] = [
        (k, (None, v if isinstance(v, str) else json.dumps(v))) for k, v in form.items()
    ]
    if image is not None:
        parts.append(("image", ("scene.png", image, "image/png")))
    headers = {"Prefer": f"wait={wait}"} if wait is not None else {}
    return client.post("/v1/segmentations", files=parts, headers=headers)


def _png(client: TestClient, url: str) -> Image.Image:
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(r.content))


def test_clicks_give_one_mask_per_instance_and_the_next_click_reuses_the_image(
    client: TestClient, worker: WorkerContext
) -> None:
    r = _segment(client, image=_scene(), prompts=CLICKS)
    assert r.status_code == 200, r.text
    job = r.json()
    assert (job["kind"], job["status"], job["concept_id"]) == ("segment", "succeeded", None)
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    seg = job["result"]["segmentation"]
    assert (seg["mode"], seg["width"], seg["height"]) == ("prompts", 96, 80)
    assert [m["index"] for m in seg["masks"]] == [0, 1] and seg["candidates"] == []
    assert seg["embedding_reused"] is False
    for m in seg["masks"]:
        mask = _png(client, m["url"])
        assert (mask.mode, mask.size) == ("L", (96, 80))
        assert set(mask.getdata()) <= {0, 255} and m["area"] == mask.histogram()[255]
        assert isinstance(m["score"], float) and len(m["box"]) == 4
    assert _png(client, seg["overlay_url"]).size == (96, 80)
    assert job["request"]["prompts"][0] == {"points": [[30, 40]], "labels": [1]}

    again = _segment(client, image_id=seg["image_id"], prompts=[{"box": [10, 20, 45, 60]}])
    assert again.status_code == 200, again.text
    reused = again.json()["result"]["segmentation"]
    assert reused["image_id"] == seg["image_id"] and reused["embedding_reused"] is True
    assert len(reused["masks"]) == 1


def test_proposals_are_ranked_candidates_with_mask_score_and_box(
    client: TestClient, worker: WorkerContext
) -> None:
    first = _segment(client, image=_scene(), prompts=CLICKS).json()
    image_id = first["result"]["segmentation"]["image_id"]
    r = _segment(client, image_id=image_id, mode="proposals", options=LOOSE)
    assert r.status_code == 200, r.text
    seg = r.json()["result"]["segmentation"]
    assert seg["mode"] == "proposals" and seg["masks"] == []
    found = seg["candidates"]
    assert 1 <= len(found) <= 3 and [c["index"] for c in found] == list(range(len(found)))
    assert [c["score"] for c in found] == sorted((c["score"] for c in found), reverse=True)
    for c in found:
        assert len(c["box"]) == 4 and len(c["point"]) == 2 and "stability" in c
        assert _png(client, c["url"]).size == (96, 80)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_masks_from_clicks_learn_like_painted_ones(
    client: TestClient, worker: WorkerContext
) -> None:
    seg = _segment(client, image=_scene(), prompts=CLICKS).json()["result"]["segmentation"]
    masks = [client.get(m["url"]).content for m in seg["masks"]]
    files = [("image", ("scene.png", _scene(), "image/png"))]
    files += [("masks", (f"mask_{i:02d}.png", m, "image/png")) for i, m in enumerate(masks)]
    # The random tiny SAM's masks of two blobs overlap: allowed here, refused by default.
    options = json.dumps({**QUICK, "max_mask_overlap": 1.0})
    r = client.post(
        "/v1/concepts",
        files=files,
        data={"names": "left,right", "options": options},
        headers={"Prefer": "wait=60"},
    )
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["job"]["status"] == "succeeded", created["job"]["error"]
    assert created["concept"]["status"] == "ready" and len(created["concept"]["tokens"]) == 2


def _bad(settings: Settings) -> list[tuple[dict[str, Any], int, str, str]]:
    outside = [{"points": [[96, 40]]}]
    many = [{"points": [[5, 5]]}] * (settings.max_instances + 1)
    return [
        ({"prompts": outside}, 422, "invalid_prompts", "prompts[0].points[0]"),
        ({"prompts": []}, 422, "invalid_prompts", "prompts"),
        ({}, 422, "invalid_prompts", "prompts"),
        ({"prompts": many}, 422, "too_many_instances", "prompts"),
        ({"prompts": "[{"}, 422, "invalid_json", "prompts"),
        (
            {"prompts": [{"points": [[5, 5]], "labels": [0]}]},
            422,
            "invalid_prompts",
            "prompts[0].labels",
        ),
        ({"prompts": [{"box": [50, 20, 10, 60]}]}, 422, "invalid_prompts", "prompts[0].box"),
        ({"prompts": [{"points": [[5, 5]] * 17}]}, 422, "invalid_prompts", "prompts[0].points"),
        ({"prompts": [{"point": [5, 5]}]}, 422, "invalid_prompts", "prompts[0].point"),
        ({"image_id": str(uuid.uuid4()), "prompts": CLICKS}, 404, "not_found", "image_id"),
        ({"image_id": "not-an-id", "prompts": CLICKS}, 422, "validation_error", "image_id"),
        ({"mode": "everything"}, 422, "validation_error", "mode"),
        ({"mode": "proposals", "prompts": CLICKS}, 422, "invalid_prompts", "prompts"),
        ({"prompts": CLICKS, "options": LOOSE}, 422, "invalid_config", "options"),
        (
            {"mode": "proposals", "options": {"max_points": 2}},
            422,
            "invalid_config",
            "options.max_points",
        ),
        (
            {"mode": "proposals", "options": {"points_per_side": 64}},
            422,
            "limit_exceeded",
            "options.points_per_side",
        ),
        (
            {"mode": "proposals", "options": {"dedupe_iou": -1}},
            422,
            "invalid_config",
            "options.dedupe_iou",
        ),
    ]


def test_bad_input_is_problem_json_naming_the_field_and_stores_nothing(
    client: TestClient, session: Session, settings: Settings
) -> None:
    for form, status, code, field in _bad(settings):
        with_image = {"image": _scene()} if "image_id" not in form else {}
        r = _segment(client, wait=None, **with_image, **form)
        problem = r.json()
        assert (r.status_code, problem["type"], problem.get("field")) == (
            status,
            f"/problems/{code}",
            field,
        ), (form, problem)
        assert problem["detail"] and problem["fix"], problem
    r = _segment(client, wait=None, prompts=CLICKS)
    assert (r.status_code, r.json()["field"]) == (422, "image")
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert session.scalar(select(func.count()).select_from(SegmentImage)) == 0
    assert not list((settings.data_dir / "objects").rglob("*.png"))


def test_an_image_of_another_tenant_is_unknown_and_both_image_and_id_refused(
    client: TestClient, settings: Settings, worker: WorkerContext
) -> None:
    seg = _segment(client, image=_scene(), prompts=CLICKS).json()["result"]["segmentation"]
    r = _segment(client, wait=None, image=_scene(), image_id=seg["image_id"], prompts=CLICKS)
    assert (r.status_code, r.json()["field"]) == (422, "image_id")
    with TestClient(client.app, headers=bearer(new_key(settings, "other"))) as other:
        r = _segment(other, wait=None, image_id=seg["image_id"], prompts=CLICKS)
    assert (r.status_code, r.json()["field"]) == (404, "image_id")


def test_a_point_is_checked_against_the_stored_image_without_a_new_upload(
    client: TestClient, worker: WorkerContext
) -> None:
    seg = _segment(client, image=_scene(), prompts=CLICKS).json()["result"]["segmentation"]
    r = _segment(client, wait=None, image_id=seg["image_id"], prompts=[{"points": [[10, 80]]}])
    problem = r.json()
    assert (r.status_code, problem["field"]) == (422, "prompts[0].points[0]")
    assert "96x80" in problem["detail"]


def test_without_wait_the_answer_is_202_and_the_job_ends_later(
    client: TestClient, worker: WorkerContext
) -> None:
    r = _segment(client, wait=None, image=_scene(), prompts=CLICKS)
    assert r.status_code == 202 and r.json()["status"] == "queued"
    job_id = r.json()["id"]
    wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded", 30)
    listed = client.get("/v1/jobs", params={"kind": "segment"}).json()
    assert [j["id"] for j in listed["data"]] == [job_id]
