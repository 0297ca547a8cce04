"""Segmentations through the client against a real `mifo serve` (tiny models, SAM too): a
concept made in three calls (segment, learn with the mask files, synthesize), the next
click by `image_id`, proposals, the mask downloads, refusals as exceptions naming the field;
and how the prompts are built from the per-instance lists."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mifo_client import (
    AsyncClient,
    Client,
    InvalidRequestError,
    JobNotSucceededError,
    NotFoundError,
    _core,
)
from tests.helpers.serve import BOXES, QUICK

ROOT = Path(__file__).resolve().parents[2]
LOOSE = {"points_per_side": 4, "min_predicted_iou": 0, "min_stability": 0, "max_proposals": 3}


def test_a_concept_in_three_calls_segment_learn_synthesize(
    service: str, scene: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    image, _ = scene
    with Client(service) as client:
        seg = client.segment(image, points=[[[30, 40]], [[66, 40]]])
        # The random tiny SAM's masks of the two blobs overlap: allowed for this test.
        options = {**QUICK, "max_mask_overlap": 1.0}
        masks = client.download_masks(seg, tmp_path / "masks")
        created = client.learn(image, masks, names=["left", "right"], options=options, wait=60)
        learned = created.job if created.job.done else client.wait(created, timeout=600)
        job = client.synthesize(created, "a photo of <asset0> and <asset1>", BOXES, steps=2)
        job = client.wait(job, timeout=600)
    assert [p.name for p in masks] == ["mask_00.png", "mask_01.png"]
    assert all(Image.open(p).size == Image.open(image).size for p in masks)
    assert learned.succeeded, learned.error
    assert job.succeeded and job.result is not None and job.result.images, job.error


def test_the_three_call_example_of_client_md_runs_as_written(
    service: str, scene: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    text = (ROOT / "docs" / "client.md").read_text()
    section = text.split("### Segmentations: masks from clicks", 1)[1]
    block = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    shutil.copy(scene[0], tmp_path / "scene.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIFO_")}
    env |= {"MIFO_API_URL": service, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["mask_00.png", "mask_01.png"]
    assert "succeeded" in done.stdout and len(list((tmp_path / "images").glob("*.png"))) == 1


def test_the_next_click_reuses_the_image_and_proposals_come_ranked(
    service: str, scene: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    image, _ = scene

    async def run() -> None:
        async with AsyncClient(service) as client:
            first = await client.segment(image.read_bytes(), points=[[[30, 40]]])
            seg = first.result.segmentation if first.result else None
            assert first.kind == "segment" and first.succeeded and seg is not None
            again = await client.segment(
                image_id=seg.image_id, points=[[[30, 40], [66, 40]]], labels=[[1, 0]]
            )
            reused = again.result.segmentation if again.result else None
            assert reused is not None and reused.embedding_reused and len(reused.masks) == 1
            assert again.request["prompts"] == [{"points": [[30, 40], [66, 40]], "labels": [1, 0]}]
            found = await client.propose(image_id=seg.image_id, options=LOOSE)
            candidates = found.result.segmentation.candidates if found.result else []
            assert 1 <= len(candidates) <= 3 and candidates[0].box and candidates[0].url
            saved = await client.download_masks(found, tmp_path / "found")
            assert [p.name for p in saved] == [f"candidate_{i:02d}.png" for i in range(len(saved))]
            files = await client.download(again, tmp_path / "all", previews=True)
            names = sorted(p.name for p in files)
            assert names == [f"{again.id}_mask_00.png", f"{again.id}_overlay.png"]

    asyncio.run(run())


def test_refusals_are_exceptions_naming_the_field(
    service: str, scene: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    image, masks = scene
    with Client(service) as client:
        with pytest.raises(InvalidRequestError) as outside:
            client.segment(image, points=[[[500, 40]]])
        assert outside.value.field == "prompts[0].points[0]" and outside.value.fix
        with pytest.raises(NotFoundError) as unknown:
            client.segment(image_id="00000000-0000-0000-0000-000000000000", boxes=[[1, 1, 9, 9]])
        assert unknown.value.field == "image_id"
        with pytest.raises(InvalidRequestError) as none:
            client.segment(image)
        assert none.value.field == "prompts"
        learn = client.learn(image, masks, options=QUICK)
        with pytest.raises(JobNotSucceededError):
            client.download_masks(learn.job, tmp_path)


def test_prompts_take_entry_i_of_each_list_for_instance_i() -> None:
    prompts = _core.instance_prompts(
        points=[[(1, 2), (3, 4)], None, [[5, 6]]], labels=[[1, 0]], boxes=[None, (0, 0, 9, 9)]
    )
    assert prompts == [
        {"points": [[1, 2], [3, 4]], "labels": [1, 0]},
        {"box": [0, 0, 9, 9]},
        {"points": [[5, 6]]},
    ]
    assert _core.instance_prompts(None, None, None) == []
    form = _core.segment_form("id", prompts[:1], None)
    assert form["mode"] == "prompts" and form["image_id"] == "id" and "options" not in form
    assert _core.segment_form(None, None, {"points_per_side": 4}) == {
        "mode": "proposals",
        "options": '{"points_per_side": 4}',
    }
