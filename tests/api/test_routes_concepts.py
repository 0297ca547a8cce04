"""POST/GET/DELETE /v1/concepts against PostgreSQL and SQLite."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import Artifact, Concept, Job
from core.settings import Settings
from mifo_engine.config import LearnConfig
from mifo_engine.inputs import mask_to_binary
from tests.helpers.db import bearer
from tests.helpers.factories import blank_mask, make_concept, make_job, png, scene
from tests.helpers.images import with_exif_orientation


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
    # The engine's own rule, at submission rather than in the job: no name looks like a token.
    r = _post(client, image, masks, names="<left>, right")
    assert (r.status_code, r.json()["field"]) == (422, "names[0]"), r.text
    assert "'<'" in r.json()["detail"] and r.json()["fix"]
    # The name at fault is named: the empty one, the second of two equal ones.
    for names, field in (("left, ", "names[1]"), ("left, left", "names[1]"), (" ,x", "names[0]")):
        r = _post(client, image, masks, names=names)
        assert (r.status_code, r.json()["field"]) == (422, field), (names, r.text)
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


def test_the_same_mask_twice_is_422_naming_both_and_their_overlap(
    client: TestClient, session: Session, settings: Settings
) -> None:
    image, masks = scene()
    r = _post(client, image, [masks[0], masks[1], masks[0]])
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["type"] == "/problems/masks_overlap" and problem["field"] == "masks[2]"
    assert problem["detail"].startswith("masks[0] and masks[2] share 100% of their pixels")
    _nothing_stored(session, settings)


def test_an_instance_lost_at_the_base_models_size_is_422_at_upload(
    client: TestClient, session: Session, settings: Settings
) -> None:
    """`tiny` learns at 64 px: a 4 px dot on a 640 px image vanishes there (it would survive
    SD 2.1's 512 px), so the upload is refused rather than a job failing later."""
    image, masks = scene(640)
    dot = Image.new("L", (640, 640), 0)
    dot.paste(255, (321, 321, 325, 325))  # between two of the 64 px grid's sample points
    r = _post(client, image, [masks[0], png(dot)])
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "masks[1]" and "64x64" in r.json()["detail"]
    _nothing_stored(session, settings)
    dot.paste(255, (300, 300, 340, 340))
    assert _post(client, image, [masks[0], png(dot)]).status_code == 202


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


@pytest.mark.parametrize(
    "options",
    [
        '{"lambda_rec": NaN}',
        '{"lr": Infinity}',
        '{"mask_threshold": -Infinity}',
        '{"lr": 1e999}',
        '{"init_words": ["box", NaN]}',
    ],
)
def test_non_finite_numbers_in_options_are_422(
    client: TestClient, session: Session, settings: Settings, options: str
) -> None:
    """Python's JSON parser takes NaN and Infinity; JSON (and PostgreSQL's json) has neither."""
    image, masks = scene()
    r = _post(client, image, masks, options=options)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["field"] == "options" and "finite" in problem["fix"]
    _nothing_stored(session, settings)


def _jpeg(img: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95, **options)
    return out.getvalue()


def _stored(client: TestClient, url: str) -> Image.Image:
    data = client.get(url).content
    stored = Image.open(io.BytesIO(data))
    assert stored.format == "PNG"
    stored.load()  # the whole file decodes
    return stored


def test_cmyk_jpeg_image_and_mask_are_stored_as_png_meaning_the_same(
    client: TestClient, session: Session
) -> None:
    """PNG cannot hold CMYK: the image is kept as the RGB the engine reads, a mask as the
    foreground the engine reads from it."""
    image, masks = scene()
    cmyk = _jpeg(Image.open(io.BytesIO(image)).convert("CMYK"))
    cmyk_mask = _jpeg(Image.open(io.BytesIO(masks[1])).convert("CMYK"))
    assert Image.open(io.BytesIO(cmyk)).mode == Image.open(io.BytesIO(cmyk_mask)).mode == "CMYK"
    files = [
        ("image", ("s.jpg", cmyk, "image/jpeg")),
        ("masks", ("m0.png", masks[0], "image/png")),
        ("masks", ("m1.jpg", cmyk_mask, "image/jpeg")),
    ]
    r = client.post("/v1/concepts", files=files)
    assert r.status_code == 202, r.text
    inputs = r.json()["concept"]["inputs"]
    stored = _stored(client, inputs["image"])
    assert stored.mode == "RGB" and stored.size == (64, 64)
    expected = np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(stored, dtype=np.int16) - expected).max() <= 1
    assert client.get(inputs["masks"][0]).content == masks[0]  # PNG: kept byte for byte
    mask = _stored(client, inputs["masks"][1])
    assert mask.mode == "L"
    threshold = LearnConfig().mask_threshold
    uploaded = mask_to_binary(Image.open(io.BytesIO(cmyk_mask)), threshold)
    assert uploaded.any() and (mask_to_binary(mask, threshold) == uploaded).all()
    assert session.scalar(select(func.count()).select_from(Artifact)) == 3


def test_jpeg_is_stored_upright(client: TestClient) -> None:
    """PNG keeps no EXIF orientation of the JPEG: the pixels are stored turned upright, as the
    engine (and the masks, drawn on the upright picture) see them."""
    image, masks = scene()
    upright = Image.open(io.BytesIO(image)).crop((0, 0, 64, 48))  # not square: a turn shows
    masks = [png(Image.open(io.BytesIO(m)).crop((0, 0, 64, 48))) for m in masks]
    turned = with_exif_orientation(upright, 6, "JPEG")
    assert Image.open(io.BytesIO(turned)).size == (48, 64)
    files = [("image", ("s.jpg", turned, "image/jpeg"))]
    files += [("masks", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    r = client.post("/v1/concepts", files=files)
    assert r.status_code == 202, r.text
    stored = _stored(client, r.json()["concept"]["inputs"]["image"])
    assert stored.size == (64, 48) and stored.getexif().get(0x0112) is None
    diff = np.asarray(stored, dtype=np.int16) - np.asarray(upright, dtype=np.int16)
    assert np.abs(diff).mean() < 4  # JPEG noise only, not a turned picture


def test_mask_without_a_greyscale_reading_is_422(
    settings: Settings, session: Session, api_key: str
) -> None:
    """A LAB mask (TIFF) has no luminance PIL can compute: refused, naming the mask."""
    from api.main import create_app

    image, masks = scene()
    lab = io.BytesIO()
    Image.open(io.BytesIO(masks[1])).convert("RGB").convert("LAB").save(lab, format="TIFF")
    tiff = settings.model_copy(update={"image_formats": ["PNG", "JPEG", "WEBP", "TIFF"]})
    with TestClient(create_app(tiff), headers=bearer(api_key)) as client:
        r = client.post(
            "/v1/concepts",
            files=[
                ("image", ("s.png", image, "image/png")),
                ("masks", ("m0.png", masks[0], "image/png")),
                ("masks", ("m1.tif", lab.getvalue(), "image/tiff")),
            ],
        )
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["field"] == "masks[1]" and problem["fix"]
    _nothing_stored(session, settings)
