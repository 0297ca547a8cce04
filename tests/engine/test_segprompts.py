"""Segmentation prompts and limits: accepted forms, and every refusal naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from mifo_engine.errors import ConfigError, InputError, TooManyInstances
from mifo_engine.segprompts import InstancePrompt, SegmentConfig, check_prompts

SIZE = (96, 80)  # width, height
CONFIG = SegmentConfig(max_instances=3, max_points=4)


def test_points_labels_and_boxes_are_read() -> None:
    checked = check_prompts(
        [
            {"points": [[10, 20], [30.5, 40]], "labels": [1, 0]},
            {"box": [0, 0, 96, 80]},
            {"points": [[95.9, 79.9]], "box": [5, 6, 50, 60]},
        ],
        SIZE,
        CONFIG,
    )
    assert checked[0] == InstancePrompt(points=((10.0, 20.0), (30.5, 40.0)), labels=(1, 0))
    assert checked[1] == InstancePrompt(box=(0.0, 0.0, 96.0, 80.0))
    # labels left out: every point includes
    assert checked[2] == InstancePrompt(points=((95.9, 79.9),), labels=(1,), box=(5, 6, 50, 60))


def test_an_instance_prompt_object_is_checked_too() -> None:
    ok = InstancePrompt(points=((1.0, 2.0),), labels=(1,))
    assert check_prompts([ok], SIZE, CONFIG) == (ok,)
    with pytest.raises(InputError) as err:
        check_prompts([InstancePrompt(points=((100.0, 2.0),), labels=(1,))], SIZE, CONFIG)
    assert err.value.field == "prompts[0].points[0]"


def test_a_box_with_exclude_points_only_is_enough() -> None:
    checked = check_prompts(
        [{"points": [[50, 40]], "labels": [0], "box": [1, 1, 90, 70]}], SIZE, CONFIG
    )
    assert checked[0].labels == (0,)


BAD: list[tuple[str, Any, str, str]] = [
    ("no prompts", [], "prompts", "No prompts"),
    ("not a list", {"points": [[1, 2]]}, "prompts", "one entry per instance"),
    ("too many instances", [{"box": [0, 0, 9, 9]}] * 4, "prompts", "max_instances"),
    ("neither points nor box", [{}], "prompts[0]", "neither points nor a box"),
    ("empty points, no box", [{"points": []}], "prompts[0]", "neither"),
    ("not an object", [[1, 2]], "prompts[0]", "must be an object"),
    ("unknown key", [{"points": [[1, 2]], "mask": 1}], "prompts[0].mask", "unknown key"),
    ("point outside, x", [{"points": [[96, 10]]}], "prompts[0].points[0]", "outside"),
    ("point outside, y", [{"points": [[1, 1], [5, -0.5]]}], "prompts[0].points[1]", "outside"),
    ("point of 3 numbers", [{"points": [[1, 2, 3]]}], "prompts[0].points[0]", "2 finite"),
    ("point as text", [{"points": [["1", 2]]}], "prompts[0].points[0]", "2 finite"),
    ("point as booleans", [{"points": [[True, 2]]}], "prompts[0].points[0]", "2 finite"),
    ("point NaN", [{"points": [[float("nan"), 2]]}], "prompts[0].points[0]", "2 finite"),
    ("point huge", [{"points": [[10**400, 2]]}], "prompts[0].points[0]", "2 finite"),
    ("points not a list", [{"points": "1,2"}], "prompts[0].points", "list of [x, y]"),
    ("too many points", [{"points": [[1, 1]] * 5}], "prompts[0].points", "max_points"),
    (
        "fewer labels",
        [{"points": [[1, 1], [2, 2]], "labels": [1]}],
        "prompts[0].labels",
        "1 labels for 2",
    ),
    (
        "more labels",
        [{"points": [[1, 1]], "labels": [1, 0]}],
        "prompts[0].labels",
        "2 labels for 1",
    ),
    (
        "labels, no points",
        [{"labels": [1], "box": [0, 0, 5, 5]}],
        "prompts[0].labels",
        "1 labels for 0",
    ),
    (
        "label 2",
        [{"points": [[1, 1], [2, 2]], "labels": [1, 2]}],
        "prompts[0].labels[1]",
        "1 (include)",
    ),
    ("label True", [{"points": [[1, 1]], "labels": [True]}], "prompts[0].labels[0]", "1 (include)"),
    ("label -1", [{"points": [[1, 1]], "labels": [-1]}], "prompts[0].labels[0]", "1 (include)"),
    (
        "exclude points only",
        [{"points": [[1, 1]], "labels": [0]}],
        "prompts[0].labels",
        "only exclude",
    ),
    ("box inverted x", [{"box": [50, 0, 10, 20]}], "prompts[0].box", "inverted"),
    ("box inverted y", [{"box": [0, 30, 10, 20]}], "prompts[0].box", "inverted"),
    ("box of no width", [{"box": [10, 0, 10, 20]}], "prompts[0].box", "inverted or empty"),
    ("box outside right", [{"box": [10, 0, 97, 20]}], "prompts[0].box", "outside"),
    ("box outside top", [{"box": [10, -1, 50, 20]}], "prompts[0].box", "outside"),
    ("box of 3 numbers", [{"box": [1, 2, 3]}], "prompts[0].box", "4 finite"),
    (
        "second instance",
        [{"box": [0, 0, 5, 5]}, {"points": [[1, 100]]}],
        "prompts[1].points[0]",
        "outside",
    ),
]


@pytest.mark.parametrize(("case", "prompts", "field", "words"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_prompt_is_refused_naming_its_field(
    case: str, prompts: Any, field: str, words: str
) -> None:
    with pytest.raises(InputError) as err:
        check_prompts(prompts, SIZE, CONFIG)
    assert err.value.field == field, case
    assert words in err.value.message, err.value.message
    assert err.value.fix


def test_too_many_instances_has_its_own_code() -> None:
    with pytest.raises(TooManyInstances) as err:
        check_prompts([{"box": [0, 0, 9, 9]}] * 9, SIZE, SegmentConfig())
    assert err.value.code == "too_many_instances"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_points": 0}, "max_points"),
        ({"max_instances": 0}, "max_instances"),
        ({"embedding_cache_size": 0}, "embedding_cache_size"),
        ({"points_per_side": 65}, "points_per_side"),
        ({"min_predicted_iou": 1.5}, "min_predicted_iou"),
        ({"dedupe_iou": -0.1}, "dedupe_iou"),
        ({"stability_offset": -1.0}, "stability_offset"),
        ({"max_points": "4"}, "max_points"),
        ({"points_per_sid": 8}, "points_per_sid"),
    ],
)
def test_a_bad_config_is_a_config_error_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        SegmentConfig.from_mapping(changes)
    assert err.value.field == field


def test_config_round_trips_through_a_mapping() -> None:
    config = SegmentConfig(points_per_side=8, min_stability=0.5)
    assert SegmentConfig.from_mapping(config.to_dict()) == config
