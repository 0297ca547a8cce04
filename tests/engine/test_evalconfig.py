"""The evaluation's settings: defaults, refusals naming the field, the prompt plan, the boxes."""

import pytest

from mifo_engine.errors import ConfigError
from mifo_engine.evalconfig import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_DINO_MODEL,
    PAPER_PROMPTS,
    EvaluationConfig,
    grid_boxes,
    named_text,
    plan_runs,
)
from mifo_engine.layout import validate_synthesis_request
from mifo_engine.models import load_tokenizer

TOKENS = [("<asset0>", "red car"), ("<asset1>", "blue car")]


def test_defaults_are_the_papers_ten_prompts_and_pinned_models() -> None:
    cfg = EvaluationConfig()
    assert cfg.prompts == PAPER_PROMPTS and len(PAPER_PROMPTS) == 10
    assert all(p.startswith("a photo of {token} ") for p in PAPER_PROMPTS)
    for spec in (DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL):
        repo, _, commit = spec.partition("@")
        assert "/" in repo and len(commit) == 40 and int(commit, 16) >= 0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"prompts": []}, "prompts"),
        ({"prompts": ["   "]}, "prompts"),
        ({"prompts": ["{token} and {token}"]}, "prompts"),
        ({"images_per_prompt": 0}, "images_per_prompt"),
        ({"steps": 0}, "steps"),
        ({"seed": -1}, "seed"),
        ({"area": [0.5, 0.1, 0.4, 0.9]}, "area"),
        ({"gap": -0.1}, "gap"),
        ({"fill": [0, 0, 256]}, "fill"),
        ({"clip_model": "openai/clip-vit-large-patch14@main"}, "clip_model"),
        ({"dino_model": ""}, "dino_model"),
        ({"dino_model": 3}, "dino_model"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EvaluationConfig.from_mapping(changes)
    assert caught.value.field == field


def test_a_hub_id_without_a_revision_or_a_folder_passes_the_syntax_check() -> None:
    # whether it is a folder or an unpinned hub id is decided where it is loaded
    assert EvaluationConfig(clip_model="some/folder").clip_model == "some/folder"
    assert EvaluationConfig(dino_model="tiny").dino_model == "tiny"


def test_a_template_runs_once_per_instance_with_the_whole_area() -> None:
    cfg = EvaluationConfig(prompts=("a photo of {token} in the snow",))
    runs = plan_runs(TOKENS, cfg)
    assert [(r.prompt, r.text) for r in runs] == [
        ("a photo of <asset0> in the snow", "a photo of red car in the snow"),
        ("a photo of <asset1> in the snow", "a photo of blue car in the snow"),
    ]
    assert runs[1].boxes == {"<asset1>": cfg.area}


def test_a_prompt_naming_tokens_runs_once_with_one_box_each_in_prompt_order() -> None:
    cfg = EvaluationConfig(prompts=("<asset1> beside <asset0>, and <asset1> again",))
    (run,) = plan_runs(TOKENS, cfg)
    assert list(run.boxes) == ["<asset1>", "<asset0>"]
    assert run.boxes["<asset1>"] == (0.125, 0.125, 0.475, 0.875)
    assert run.boxes["<asset0>"] == (0.525, 0.125, 0.875, 0.875)
    assert run.text == "blue car beside red car, and blue car again"


@pytest.mark.parametrize(
    ("prompt", "said"),
    [("a photo of a car", "names none of"), ("a photo of <asset2>", "<asset2>")],
)
def test_a_prompt_without_the_concepts_tokens_is_refused(prompt: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_runs(TOKENS, EvaluationConfig(prompts=(prompt,)))
    assert caught.value.field == "prompts" and said in str(caught.value)
    assert "{token}" in str(caught.value.fix)


def test_grid_boxes_tile_the_area_and_pass_the_layout_check() -> None:
    area = (0.1, 0.1, 0.9, 0.9)
    assert grid_boxes(1, area, 0.025) == [area]
    boxes = grid_boxes(8, area, 0.025)  # 3 columns, 3 rows
    assert len(set(boxes)) == 8 and boxes[3][0] == boxes[0][0] and boxes[3][1] > boxes[0][3]
    meta = {
        "tokens": [{"token": f"<asset{k}>", "name": f"n{k}"} for k in range(8)],
        "coarsest_attention_resolution": 8,  # SD 2.1 at 512 px
    }
    prompt = " and ".join(f"<asset{k}>" for k in range(8))
    layout = validate_synthesis_request(
        meta, prompt, {f"<asset{k}>": b for k, b in enumerate(boxes)}, load_tokenizer("tiny")
    )
    assert len(layout.subjects) == 8


def test_named_text_leaves_other_words_alone() -> None:
    names = dict(TOKENS)
    assert named_text("<asset0> near <asset9>", names) == "red car near <asset9>"
