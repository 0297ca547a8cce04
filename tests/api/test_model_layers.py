"""Options naming attention layers the base model lacks are refused at submission (422
naming the option and what the model offers), read from the model's UNet config without
torch; a base model the engine cannot run (SDXL) is not ready and refuses jobs (503)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from core.settings import Settings
from tests.helpers.db import bearer
from tests.helpers.factories import make_concept
from tests.helpers.images import encode, make_scene
from tests.helpers.models import SHAPES, save_shape

PROMPT = "a photo of <asset0> and <asset1>"
BOXES = {"<asset0>": [0.0, 0.0, 0.5, 1.0], "<asset1>": [0.5, 0.0, 1.0, 1.0]}
OFFERS = "up 16 (8x8), 32 (16x16)"  # the 2-level model's decoder, at its 16x16 latent


@pytest.fixture(scope="module")
def two_levels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_shape(SHAPES["two_levels"], tmp_path_factory.mktemp("two_levels") / "model")


@pytest.fixture
def on_two_levels(settings: Settings, api_key: str, two_levels: Path) -> Iterator[TestClient]:
    served = settings.model_copy(update={"base_model": str(two_levels)})
    with TestClient(create_app(served), headers=bearer(api_key)) as client:
        yield client


def _upload(options: dict | None = None) -> dict:
    image, masks = make_scene()
    files = [("image", ("s.png", encode(image), "image/png"))]
    files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
    data = {} if options is None else {"options": json.dumps(options)}
    return {"files": files, "data": data}


def test_learning_options_naming_a_missing_layer_are_422_and_store_nothing(
    on_two_levels: TestClient,
) -> None:
    r = on_two_levels.post("/v1/concepts", **_upload({"attn_loss_resolutions": [16, 64]}))
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["type"].endswith("/invalid_config")
    assert problem["field"] == "options.attn_loss_resolutions"
    assert "up 64" in problem["detail"] and OFFERS in problem["detail"]
    assert problem["fix"] == "name one of 16, 32 at up"
    assert on_two_levels.get("/v1/concepts").json()["total"] == 0
    accepted = on_two_levels.post("/v1/concepts", **_upload())  # the defaults fit
    assert accepted.status_code == 202, accepted.text


def test_synthesis_options_naming_a_missing_layer_are_422_before_any_job(
    on_two_levels: TestClient, session: Session, two_levels: Path
) -> None:
    concept = make_concept(session)
    concept.base_model = str(two_levels)
    session.commit()
    url = f"/v1/concepts/{concept.id}/syntheses"
    for options, field in (
        ({"loss_layers": [["mid", 8], ["up", 64]]}, "options.loss_layers"),
        ({"refine_resolution": 8}, "options.refine_resolution"),
    ):
        r = on_two_levels.post(url, json={"prompt": PROMPT, "boxes": BOXES, "options": options})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field and OFFERS in r.json()["detail"]
    assert on_two_levels.get(url).json()["total"] == 0
    r = on_two_levels.post(url, json={"prompt": PROMPT, "boxes": BOXES})
    assert r.status_code == 202, r.text
    off = {"mask_refinement": False, "refine_resolution": 8}  # refinement off: not read
    r = on_two_levels.post(url, json={"prompt": PROMPT, "boxes": BOXES, "options": off})
    assert r.status_code == 202, r.text


def test_on_sd21s_layout_a_side_it_has_no_attention_at_is_refused(
    client: TestClient, session: Session
) -> None:
    concept = make_concept(session)
    session.commit()
    body = {"prompt": PROMPT, "boxes": BOXES, "options": {"loss_layers": [["up", 8]]}}
    r = client.post(f"/v1/concepts/{concept.id}/syntheses", json=body)
    assert r.status_code == 422 and r.json()["field"] == "options.loss_layers"
    assert "up 16 (8x8), 32 (16x16), 64 (32x32)" in r.json()["detail"]  # tiny, latent 32


def test_an_sdxl_pipeline_is_not_ready_and_refuses_jobs(
    settings: Settings, api_key: str, two_levels: Path, tmp_path: Path
) -> None:
    sdxl = Path(shutil.copytree(two_levels, tmp_path / "sdxl"))
    shutil.copytree(sdxl / "text_encoder", sdxl / "text_encoder_2")
    served = settings.model_copy(update={"base_model": str(sdxl)})
    with TestClient(create_app(served), headers=bearer(api_key)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and "SDXL and later" in r.json()["checks"]["base_model"]
        r = client.post("/v1/concepts", **_upload())
        assert r.status_code == 503 and r.json()["type"].endswith("/model_unavailable")
        assert "SDXL and later" in r.json()["detail"]
        assert client.get("/v1/concepts").json()["total"] == 0
