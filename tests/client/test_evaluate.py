"""`evaluate` of the client (sync and async) against a real `mifo serve --base-model tiny`
with the tiny feature models: the metrics per token, each image's scores, the files saved;
a synthesis with `evaluate=True`; a refused prompt as an exception naming the field."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mifo_client import AsyncClient, Client, Concept, InvalidRequestError
from tests.helpers.serve import BOXES, QUICK

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"
WAIT = 600  # seconds: generous, for a loaded 2-core machine
TEMPLATE = "a photo of {token} in the snow"


@pytest.fixture(scope="module")
def concept(service: str, scene: tuple[Path, list[Path]]) -> Concept:
    image, masks = scene
    with Client(service) as client:
        created = client.learn(image, masks, names=["left blob", "right blob"], options=QUICK)
        job = client.wait(created, timeout=WAIT)
    assert job.succeeded and job.result is not None and job.result.concept is not None
    return job.result.concept


def test_evaluate_wait_and_download_the_json_the_chart_and_the_images(
    service: str, concept: Concept, tmp_path: Path
) -> None:
    with Client(service) as client:
        job = client.evaluate(concept, [TEMPLATE], images_per_prompt=1, steps=2, seed=5)
        assert job.kind == "evaluate" and job.request["prompts"] == [TEMPLATE]
        done = client.wait(job, timeout=WAIT)
        assert done.succeeded, done.error
        saved = client.download(done, tmp_path)
    evaluation = done.result.evaluation if done.result else None
    assert evaluation is not None
    assert [(r.token, r.name) for r in evaluation.rows] == [
        ("<asset0>", "left blob"),
        ("<asset1>", "right blob"),
    ]
    for row in [*evaluation.rows, evaluation.mean]:
        assert None not in (row.sim_c, row.sim_d, row.nsim_d, row.cs)
    assert [(i.prompt, i.seed) for i in evaluation.images] == [
        ("a photo of <asset0> in the snow", 5),
        ("a photo of <asset1> in the snow", 5),
    ]
    assert evaluation.images[0].text == "a photo of left blob in the snow"
    assert set(evaluation.images[1].subjects) == {"<asset1>"}
    names = sorted(p.name for p in saved)
    assert names == sorted(
        [
            f"{done.id}_evaluation.json",
            f"{done.id}_chart.png",
            f"{done.id}_image_000.png",
            f"{done.id}_image_001.png",
        ]
    )
    record = json.loads((tmp_path / f"{done.id}_evaluation.json").read_text())
    assert record["mean"]["sim_c"] == evaluation.mean.sim_c
    assert all(p.read_bytes().startswith(PNG) for p in saved if p.suffix == ".png")


def test_a_prompt_without_the_concepts_tokens_raises_naming_prompts(
    service: str, concept: Concept
) -> None:
    with Client(service) as client, pytest.raises(InvalidRequestError) as refused:
        client.evaluate(concept, "a photo of a dog")
    assert refused.value.status == 422 and refused.value.field == "prompts"
    assert refused.value.fix and "{token}" in refused.value.fix


def test_the_async_client_evaluates_and_a_synthesis_can_carry_metrics(
    service: str, concept: Concept
) -> None:
    async def run() -> None:
        async with AsyncClient(service) as client:
            job = await client.evaluate(
                concept, ["<asset1> beside <asset0>"], images_per_prompt=1, steps=1, wait=60
            )
            done = job if job.done else await client.wait(job, timeout=WAIT)
            assert done.succeeded and done.result and done.result.evaluation
            assert done.result.evaluation.mean.images == 2  # one image, two subjects
            synth = await client.synthesize(concept, "<asset0> and <asset1>", BOXES, steps=1)
            synth = await client.wait(synth, timeout=WAIT)
            assert synth.result and synth.result.images
            assert synth.result.images[0].metrics is None
            synth = await client.synthesize(
                concept, "<asset0> and <asset1>", BOXES, steps=1, evaluate=True
            )
            synth = await client.wait(synth, timeout=WAIT)
            metrics = (
                synth.result.images[0].metrics if synth.result and synth.result.images else None
            )
            assert metrics is not None and set(metrics.subjects) == {"<asset0>", "<asset1>"}

    asyncio.run(run())
