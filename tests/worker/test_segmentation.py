"""Segmentation jobs in the worker (called directly, no broker): SAM instead of the base
model, a model that cannot load or an image that is gone failing the job with nothing left
behind, the process keeping one Segmenter, the overlay and the boxes."""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.models import segment_image_prefix
from core.settings import Settings
from core.storage import storage_from_settings
from tests.helpers.images import encode, make_scene
from worker import segmentation
from worker.cache import ConceptCache
from worker.context import WorkerContext
from worker.runner import run_job

CLICKS = [{"points": [[30, 40]]}, {"box": [50, 20, 86, 60]}]


@pytest.fixture(scope="module", autouse=True)
def _sam_imported() -> None:
    """transformers imports lazily and not thread-safely: SAM's classes are imported here,
    before an app's start-up thread loads its tokenizer while a worker loads SAM."""
    from mifo_engine.sam import build_tiny_sam

    build_tiny_sam()


def _no_base() -> Any:
    raise AssertionError("a segmentation loads no base model")


def _queue(client: TestClient, **form: Any) -> dict[str, Any]:
    parts: list[tuple[str, Any]] = [(k, (None, json.dumps(v))) for k, v in form.items()]
    parts.append(("image", ("scene.png", encode(make_scene()[0]), "image/png")))
    r = client.post("/v1/segmentations", files=parts)
    assert r.status_code == 202, r.text
    return dict(r.json())


def _ctx(settings: Settings, model: str) -> WorkerContext:
    return WorkerContext.from_settings(settings.model_copy(update={"segment_model": model}))


def test_a_segmentation_runs_on_sam_alone_and_the_process_keeps_one_segmenter(
    client: TestClient, settings: Settings
) -> None:
    ctx = _ctx(settings, "tiny")
    job = _queue(client, prompts=CLICKS)
    assert run_job(ctx, uuid.UUID(job["id"]), _no_base, ConceptCache(1)) == "succeeded"
    assert segmentation.segmenter(ctx.settings) is segmentation.segmenter(ctx.settings)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    image_id = done["result"]["segmentation"]["image_id"]
    keys = storage_from_settings(settings).keys(segment_image_prefix(uuid.UUID(image_id)))
    names = sorted(k.rsplit("/", 1)[-1] for k in keys)
    assert names == ["image.png", "mask_00.png", "mask_01.png", "overlay.png"]
    assert all(f"/{job['id']}/attempt-1/" in k for k in keys if not k.endswith("image.png"))


def test_a_model_that_cannot_load_fails_the_job_naming_the_setting(
    client: TestClient, settings: Settings
) -> None:
    ctx = _ctx(settings, str(settings.data_dir / "no-such-sam"))
    job = _queue(client, prompts=CLICKS)
    assert run_job(ctx, uuid.UUID(job["id"]), _no_base, ConceptCache(1)) == "failed"
    error = client.get(f"/v1/jobs/{job['id']}").json()["error"]
    assert error["type"] == "model_unavailable" and "segmentation model" in error["message"]
    image_id = uuid.UUID(job["request"]["image_id"])
    keys = storage_from_settings(settings).keys(segment_image_prefix(image_id))
    assert [k.rsplit("/", 1)[-1] for k in keys] == ["image.png"]  # no output left behind


def test_an_image_removed_under_a_queued_job_fails_it_with_nothing_left(
    client: TestClient, settings: Settings
) -> None:
    ctx = _ctx(settings, "tiny")
    job = _queue(client, prompts=CLICKS)
    prefix = segment_image_prefix(uuid.UUID(job["request"]["image_id"]))
    ctx.storage.delete_prefix(prefix)
    assert run_job(ctx, uuid.UUID(job["id"]), _no_base, ConceptCache(1)) == "failed"
    assert client.get(f"/v1/jobs/{job['id']}").json()["error"]["type"] == "storage_error"
    assert ctx.storage.keys(prefix) == []


def test_a_canceled_segmentation_never_runs(client: TestClient, settings: Settings) -> None:
    job = _queue(client, prompts=CLICKS)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    ctx = _ctx(settings, "tiny")
    assert run_job(ctx, uuid.UUID(job["id"]), _no_base, ConceptCache(1)) == "skipped"


def test_mask_boxes_and_the_overlay() -> None:
    from mifo_engine.render import PALETTE

    mask = np.zeros((6, 8), dtype=bool)
    mask[2:4, 3:7] = True
    assert segmentation.mask_box(mask) == [3, 2, 7, 4]
    assert segmentation.mask_box(np.zeros((6, 8), dtype=bool)) is None
    picture = Image.new("RGB", (8, 6), (0, 0, 0))
    drawn = segmentation.overlay(picture, [mask], [])
    # The first instance's colour of the engine's palette (the previews' and the console's).
    assert drawn.getpixel((4, 2)) == tuple(round(c * segmentation.TINT) for c in PALETTE[0])
    assert drawn.getpixel((0, 0)) == (0, 0, 0)
    prompts = [{"points": [[1, 1], [6, 5]], "labels": [1, 0], "box": [0, 0, 8, 6]}]
    assert segmentation.overlay(picture, [mask], prompts).getpixel((1, 1)) != (0, 0, 0)


@pytest.mark.parametrize(("options", "points"), [({}, 16 * 16), ({"points_per_side": 4}, 4 * 4)])
def test_proposal_options_set_the_grid_and_the_server_sets_the_instances(
    settings: Settings, options: dict[str, Any], points: int
) -> None:
    config = segmentation.limits(settings.model_copy(update={"max_instances": 3}), options)
    assert config.max_instances == 3 and config.points_per_side**2 == points
