"""GET /v1/concepts/{id}/export against a real `mifo serve --base-model tiny`: the archive
loads into plain diffusers, which then draws the image the service's synthesis drew."""

from __future__ import annotations

import asyncio
import hashlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from mifo_client import AsyncClient, Client, ConceptCreated, ConflictError, NotFoundError
from tests.helpers.serve import BOXES, PROMPT, QUICK, serve

pytestmark = pytest.mark.slow
WAIT = 600  # seconds: generous, for a loaded 2-core machine
# A LoRA fine-tune whose weights change the image, with a scale other than 1 (alpha != rank).
OPTIONS = {**QUICK, "phase2_steps": 2, "lora_rank": 4, "lora_alpha": 8, "phase2_lora_lr": 0.03}
SEED, STEPS = 5, 4


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service computing on one thread, as this test's diffusers run does: a CPU kernel
    may sum in another order on two threads and round a pixel differently."""
    with serve(tmp_path_factory.mktemp("service"), MIFO_CPU_THREADS="1") as base:
        yield base


@pytest.fixture(scope="module")
def learned(service: str, scene: tuple[Path, list[Path]]) -> ConceptCreated:
    image, masks = scene
    with Client(service) as client:
        created = client.learn(image, masks, names=["left blob", "right blob"], options=OPTIONS)
        assert client.wait(created, timeout=WAIT).succeeded
    return created


def test_the_export_draws_the_services_image_in_plain_diffusers(
    service: str, learned: ConceptCreated, tmp_path: Path
) -> None:
    with Client(service) as client:
        archive = client.export_concept(learned, tmp_path)
        job = client.synthesize(learned, PROMPT, BOXES, seed=SEED, steps=STEPS, box_control=False)
        job = client.wait(job, timeout=WAIT)
        assert job.succeeded, job.error
        (served,) = client.download(job, tmp_path / "images")
    assert archive == tmp_path / f"concept-{learned.concept.id}.zip"
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    readme = (folder / "README.md").read_text()
    assert "| `<asset0>` | left blob |" in readme and "| `<asset1>` | right blob |" in readme
    assert json.loads((folder / "concept.json").read_text())["base_model"]["id"] == "tiny"

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from mifo_engine.models import load_base_model, save_base_model

    base_dir = save_base_model(load_base_model("tiny"), tmp_path / "tiny")
    pipe = StableDiffusionPipeline.from_pretrained(base_dir)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(
        [str(folder / "embeddings" / f"asset{i}.safetensors") for i in range(2)]
    )
    pipe.load_lora_weights(folder, weight_name="pytorch_lora_weights.safetensors")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        drawn = pipe(
            PROMPT,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
    finally:
        torch.set_num_threads(threads)
    expected = np.asarray(Image.open(served).convert("RGB"))
    got = np.asarray(drawn)
    assert np.array_equal(got, expected), f"max diff {np.abs(got - expected.astype(int)).max()}"


def test_the_archive_comes_as_an_attachment_the_same_each_time(
    service: str, learned: ConceptCreated
) -> None:
    url = f"{service}/v1/concepts/{learned.concept.id}/export"
    r = httpx.get(url, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    disposition = r.headers["content-disposition"]
    assert disposition == f'attachment; filename="concept-{learned.concept.id}.zip"'
    assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
    assert int(r.headers["content-length"]) == len(r.content)
    assert "accept-ranges" not in r.headers
    # a resumed download asks for the rest: it gets the whole archive, the same bytes
    again = httpx.get(url, headers={"Range": "bytes=100-", "If-Range": r.headers["etag"]})
    assert again.status_code == 200 and "content-range" not in again.headers
    assert again.content == r.content and again.headers["etag"] == r.headers["etag"]


def test_an_unknown_concept_is_404_and_an_unready_one_409(
    service: str, scene: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    image, masks = scene
    with Client(service) as client:
        with pytest.raises(NotFoundError) as missing:
            client.export_concept("00000000-0000-4000-8000-000000000000", tmp_path)
        assert "concept" in str(missing.value)
        # long enough to be canceled before it ends; a canceled concept never becomes ready
        created = client.learn(image, masks, options={**QUICK, "phase1_steps": 2000})
        client.cancel(created)
        with pytest.raises(ConflictError) as unready:
            client.export_concept(created, tmp_path)
    problem = unready.value
    assert problem.status == 409 and problem.field == "concept_id"
    assert "wait for its learning job to succeed" in (problem.fix or "")
    assert list(tmp_path.iterdir()) == []  # no file for a refusal


def test_the_async_client_saves_the_same_archive(
    service: str, learned: ConceptCreated, tmp_path: Path
) -> None:
    async def main() -> Path:
        async with AsyncClient(service) as client:
            return await client.export_concept(learned.concept, tmp_path)

    path = asyncio.run(main())
    with zipfile.ZipFile(path) as zf:
        assert "pytorch_lora_weights.safetensors" in zf.namelist()
    with Client(service) as client:
        same = client.export_concept(learned, tmp_path / "sync")
    assert same.read_bytes() == path.read_bytes()
    # streamed into a partial file, renamed once whole: nothing else is left
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [path.name, same.name]
