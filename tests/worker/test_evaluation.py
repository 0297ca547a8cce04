"""Evaluation jobs in the worker (worker/evaluation.py through the runner, on the tiny
models): where the files go, a feature model that cannot be loaded, a cancel mid-run."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from tests.helpers.images import encode, make_scene
from tests.helpers.wait import wait_until
from worker.cache import ConceptCache
from worker.context import WorkerContext
from worker.runner import run_job

QUICK = '{"phase1_steps": 2, "phase2_steps": 1, "reward_steps": 1, "diagnostic_timesteps": [100]}'
PROMPT = "a photo of {token}"


@pytest.fixture(scope="module")
def base() -> Any:
    import mifo_engine as me

    return me.load_base_model("tiny", device="cpu")


def _context(settings: Settings, **changes: Any) -> WorkerContext:
    return WorkerContext.from_settings(
        settings.model_copy(update={"progress_interval": 0.05, **changes})
    )


def _concept(client: TestClient, ctx: WorkerContext, base: Any) -> str:
    image, masks = make_scene()
    files = [("image", ("scene.png", encode(image), "image/png"))]
    files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
    r = client.post("/v1/concepts", files=files, data={"names": "left, right", "options": QUICK})
    assert run_job(ctx, uuid.UUID(r.json()["job"]["id"]), lambda: base, ConceptCache(1))
    return str(r.json()["concept"]["id"])


def _evaluation(client: TestClient, concept: str, **body: Any) -> str:
    body = {"prompts": [PROMPT], "images_per_prompt": 1, "steps": 1} | body
    r = client.post(f"/v1/concepts/{concept}/evaluations", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_files_lie_in_the_jobs_folder_and_a_model_that_cannot_load_names_its_setting(
    client: TestClient, settings: Settings, base: Any
) -> None:
    ctx = _context(settings)
    concept = _concept(client, ctx, base)
    job = _evaluation(client, concept)
    assert run_job(ctx, uuid.UUID(job), lambda: base, ConceptCache(1)) == "succeeded"
    folder = f"concepts/{concept}/evaluations/{job}/attempt-1/"
    stored = {key.removeprefix(folder) for key in ctx.storage.keys(folder)}
    assert {"evaluation.json", "chart.png", "images/image_000.png"} <= stored
    assert "references/asset0.png" in stored and len(stored) == 6

    broken = _context(settings, clip_model=str(settings.data_dir / "no-clip-here"))
    job = _evaluation(client, concept)
    assert run_job(broken, uuid.UUID(job), lambda: base, ConceptCache(1)) == "failed"
    error = client.get(f"/v1/jobs/{job}").json()["error"]
    assert error["type"] == "model_unavailable" and "MIFO_CLIP_MODEL" in error["message"]
    assert not ctx.storage.keys(f"concepts/{concept}/evaluations/{job}/")


def test_a_canceled_evaluation_stops_and_leaves_no_files(
    client: TestClient, settings: Settings, base: Any
) -> None:
    ctx = _context(settings)
    concept = _concept(client, ctx, base)
    job = _evaluation(client, concept, prompts=None, steps=50)  # the ten templates: 20 runs
    outcome: list[str] = []
    thread = threading.Thread(
        target=lambda: outcome.append(run_job(ctx, uuid.UUID(job), lambda: base, ConceptCache(1)))
    )
    thread.start()
    wait_until(lambda: client.get(f"/v1/jobs/{job}").json()["progress"]["step"], 60)
    progress = client.get(f"/v1/jobs/{job}").json()["progress"]
    assert progress["phase"] == "evaluation" and progress["total"] == 20 * 50
    assert client.post(f"/v1/jobs/{job}/cancel").status_code == 202
    thread.join(60)
    assert outcome == ["canceled"]
    assert client.get(f"/v1/jobs/{job}").json()["status"] == "canceled"
    assert not ctx.storage.keys(f"concepts/{concept}/evaluations/{job}/")


def test_a_concept_saved_without_its_masks_is_scored_on_its_stored_inputs(
    client: TestClient, settings: Settings, base: Any
) -> None:
    """Concepts learned before they kept their masks: the evaluation and a synthesis asked
    for with `evaluate` take the image and masks stored with the learning request."""
    ctx = _context(settings)
    concept = _concept(client, ctx, base)
    stored = ctx.storage.keys(f"concepts/{concept}/concept/")
    (meta_key,) = [key for key in stored if key.endswith("/concept.json")]
    meta = json.loads(ctx.storage.get(meta_key))
    masks = meta["files"].pop("masks")  # as concepts were saved before they kept them
    ctx.storage.put(meta_key, json.dumps(meta).encode())
    ctx.storage.delete_prefix(meta_key.removesuffix("concept.json") + "masks/")
    assert masks and not [key for key in ctx.storage.keys(meta_key[:-12]) if "/masks/" in key]
    job = _evaluation(client, concept)
    assert run_job(ctx, uuid.UUID(job), lambda: base, ConceptCache(1)) == "succeeded"
    rows = client.get(f"/v1/jobs/{job}").json()["result"]["evaluation"]["rows"]
    assert all(row["sim_d"] is not None for row in rows), rows

    body = {"prompt": "a photo of <asset0>", "boxes": {"<asset0>": [0.1, 0.1, 0.6, 0.6]}}
    body |= {"steps": 1, "evaluate": True}
    r = client.post(f"/v1/concepts/{concept}/syntheses", json=body)
    assert r.status_code == 202, r.text
    synthesis = r.json()["id"]
    assert run_job(ctx, uuid.UUID(synthesis), lambda: base, ConceptCache(1)) == "succeeded"
    images = client.get(f"/v1/jobs/{synthesis}").json()["result"]["images"]
    assert images[0]["metrics"]["subjects"], images
