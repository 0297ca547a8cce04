"""The quality evaluation end to end on the tiny base model with the tiny feature models."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from mifo_engine import evaluation as evaluation_mod
from mifo_engine.config import SynthesisConfig
from mifo_engine.errors import Canceled, ConceptError, ConfigError
from mifo_engine.evalconfig import EvaluationConfig
from mifo_engine.evaluation import evaluate, instance_references, score_synthesis
from mifo_engine.features import FeatureModels
from mifo_engine.metrics import box_mask, composite_score, cosine, masked_crop, region_mask
from mifo_engine.synthesis import synthesize

TINY = EvaluationConfig(clip_model="tiny", dino_model="tiny")
PROMPTS = ["a photo of {token} at the beach", "a photo of <asset1> and <asset0>"]


@pytest.fixture(scope="module")
def features():
    return FeatureModels("tiny", "tiny")


@pytest.fixture(scope="module")
def evaluated(tiny_base, tiny_concept, features):
    seen = []
    result = evaluate(
        tiny_base,
        tiny_concept,
        prompts=PROMPTS,
        images_per_prompt=1,
        steps=1,
        config=TINY,
        features=features,
        progress=lambda p: seen.append((p.phase, p.step, p.total)),
    )
    return result, seen


def test_one_row_per_token_and_the_mean_row(evaluated):
    result, _ = evaluated
    assert [(r.token, r.name, r.images) for r in result.rows] == [
        ("<asset0>", "left toy", 2),
        ("<asset1>", "right toy", 2),
    ]
    assert result.mean.token == "mean" and result.mean.images == 4
    for row in [*result.rows, result.mean]:
        for spread in (row.sim_c, row.sim_d, row.nsim_d):
            assert -1.0 <= spread.mean <= 1.0 and spread.std >= 0.0
        assert row.cs == pytest.approx(
            composite_score(row.sim_c.mean, row.sim_d.mean, row.nsim_d.mean)
        )


def test_each_synthesis_is_one_image_row_with_the_names_in_its_text(evaluated):
    result, _ = evaluated
    assert [(s.prompt, s.text, s.file) for s in result.images] == [
        ("a photo of <asset0> at the beach", "a photo of left toy at the beach", "image_000.png"),
        ("a photo of <asset1> at the beach", "a photo of right toy at the beach", "image_001.png"),
        ("a photo of <asset1> and <asset0>", "a photo of right toy and left toy", "image_002.png"),
    ]
    assert [[s.token for s in image.subjects] for image in result.images] == [
        ["<asset0>"],
        ["<asset1>"],
        ["<asset1>", "<asset0>"],
    ]
    assert len(result.generated) == 3 and all(s.seed == 0 for s in result.images)
    assert result.synthesis.steps == 1 and result.synthesis.guidance_steps == 1


def test_progress_counts_the_steps_of_every_synthesis(evaluated):
    _, seen = evaluated
    assert seen[0] == ("evaluation", 0, 3) and seen[-1] == ("evaluation", 3, 3)
    steps = [step for _, step, _ in seen]
    assert steps == sorted(steps) and {phase for phase, _, _ in seen} == {"evaluation"}


def test_scores_are_the_metrics_of_the_crops(tiny_base, tiny_concept, features):
    made = synthesize(
        tiny_base,
        tiny_concept,
        "a photo of <asset1> on the grass",
        {"<asset1>": (0.25, 0.2, 0.75, 0.9)},
        config=SynthesisConfig(steps=1, guidance_steps=1, num_images=2, seed=3),
    )
    refs = instance_references(tiny_concept, features, TINY.fill)
    (first, second) = score_synthesis(made, tiny_concept, features, references=refs)
    image = made.images[1]
    crop = masked_crop(image, box_mask((0.25, 0.2, 0.75, 0.9), image.size), TINY.fill)
    dino = features.dino_images([crop])[0]
    text = features.text(["a photo of right toy on the grass"])[0]
    assert second.seed == 4 and second.text == "a photo of right toy on the grass"
    assert second.sim_c == pytest.approx(cosine(features.clip_images([image])[0], text))
    (subject,) = second.subjects
    assert subject.sim_d == pytest.approx(cosine(dino, refs.embeddings[1]))
    assert subject.nsim_d == pytest.approx(cosine(dino, refs.embeddings[0]))
    assert subject.cs == pytest.approx(second.sim_c * subject.sim_d * (1 - subject.nsim_d))

    refined = np.zeros((4, 4), bool)
    refined[1:3, 2:4] = True
    regions = [{}, {"<asset1>": refined}]
    again = score_synthesis(made, tiny_concept, features, references=refs, regions=regions)
    assert again[0] == first  # no refined mask: the box, as before
    masked = masked_crop(image, region_mask((0.25, 0.2, 0.75, 0.9), image.size, refined), TINY.fill)
    expected = cosine(features.dino_images([masked])[0], refs.embeddings[1])
    assert again[1].subjects[0].sim_d == pytest.approx(expected)


def test_evaluate_scores_the_refined_masks_where_refinement_ran(
    tiny_base, tiny_concept, features, monkeypatch
):
    passed = []
    real = evaluation_mod.score_synthesis

    def recording(made, *args, **kwargs):
        passed.append((made.refined_masks, kwargs["regions"]))
        return real(made, *args, **kwargs)

    monkeypatch.setattr(evaluation_mod, "score_synthesis", recording)
    for refine_start, refined in ((1, True), (5, False)):  # 3 steps: refines at step 1 only
        evaluate(
            tiny_base,
            tiny_concept,
            prompts=PROMPTS[1:],
            images_per_prompt=1,
            steps=3,
            config=TINY,
            synthesis=SynthesisConfig(refine_start=refine_start, guidance_steps=1),
            features=features,
        )
        masks, regions = passed[-1]
        assert bool(masks) is refined
        assert regions is (masks if refined else None)


def test_the_references_are_the_masked_input_instances(tiny_concept, features, scene):
    refs = instance_references(tiny_concept, features, (0, 0, 0))
    assert refs.tokens == ("<asset0>", "<asset1>")
    for crop, mask in zip(refs.crops, tiny_concept.input_masks, strict=True):
        inside = np.asarray(mask) > 127
        rows = np.flatnonzero(inside.any(axis=1))
        cols = np.flatnonzero(inside.any(axis=0))
        side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
        assert crop.size == (side, side)
        assert (np.asarray(crop) == 0).all(axis=2).sum() >= side * side - inside.sum()
    # the learning inputs, prepared again, give the same references
    again = instance_references(tiny_concept, features, (0, 0, 0), inputs=scene)
    assert np.allclose(again.embeddings, refs.embeddings)


def test_a_concept_without_masks_needs_its_inputs(tiny_base, tiny_concept, features):
    older = dataclasses.replace(tiny_concept, input_masks=[])
    with pytest.raises(ConceptError) as caught:
        instance_references(older, features, TINY.fill)
    assert caught.value.field == "concept" and "inputs=" in str(caught.value.fix)


@pytest.mark.parametrize(
    ("prompts", "said"),
    [
        ([], "at least one prompt"),
        (["a photo of a toy"], "names none of"),
        (["a photo of <asset7>"], "<asset7>"),
        (["a photo of {token} " + "very " * 80], "tokens long"),
    ],
)
def test_bad_prompts_are_refused_before_any_work(tiny_base, tiny_concept, prompts, said):
    calls = []
    with pytest.raises(ConfigError) as caught:
        evaluate(tiny_base, tiny_concept, prompts=prompts, config=TINY, progress=calls.append)
    assert caught.value.field == "prompts" and said in str(caught.value)
    assert calls == []


def test_the_callback_stops_the_run(tiny_base, tiny_concept, features):
    with pytest.raises(Canceled):
        evaluate(
            tiny_base,
            tiny_concept,
            prompts=PROMPTS[:1],
            images_per_prompt=1,
            steps=2,
            config=TINY,
            features=features,
            progress=lambda p: p.step < 1,
        )


def test_save_writes_the_json_the_chart_the_images_and_references(evaluated, tmp_path):
    result, _ = evaluated
    folder = result.save(tmp_path / "eval")
    record = json.loads((folder / "evaluation.json").read_text())
    assert record == json.loads(result.to_json())
    assert [r["token"] for r in record["rows"]] == ["<asset0>", "<asset1>"]
    assert set(record["rows"][0]) >= {"sim_c", "sim_d", "nsim_d", "cs", "sim_d_std", "cs_std"}
    assert record["mean"]["images"] == 4 and len(record["images"]) == 3
    assert record["images"][2]["subjects"]["<asset0>"]["sim_d"] == pytest.approx(
        result.images[2].subjects[1].sim_d
    )
    assert record["feature_models"]["dino"] == {"spec": "tiny", "id": "tiny", "revision": None}
    assert record["config"]["prompts"] == PROMPTS and record["synthesis"]["num_images"] == 1
    for score in result.images:
        assert Image.open(folder / "images" / score.file).size == (64, 64)
    for rel in record["references"].values():
        assert (folder / rel).is_file()
    chart = Image.open(folder / "chart.png")
    assert chart.format == "PNG" and chart.width > 300


def test_the_table_has_a_line_per_row(evaluated):
    result, _ = evaluated
    lines = result.table().splitlines()
    assert lines[0].split() == ["token", "name", "images", "SIM-C", "SIM-D", "NSIM-D", "CS"]
    assert [line.split()[0] for line in lines[1:]] == ["<asset0>", "<asset1>", "mean"]
    assert f"{result.mean.cs:.4f}" in lines[-1]
