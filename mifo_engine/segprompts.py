"""Segmentation prompts and their limits: what a click means, checked without torch.

An instance is asked for with points (`[x, y]` in image pixels, each labelled 1 "include" or
0 "exclude") and/or a box (`[x0, y0, x1, y1]` in image pixels). `check_prompts` turns the
JSON-like form into `InstancePrompt`s or raises `InputError` naming the field at fault
(`prompts[1].points[0]`), so the HTTP front end can refuse a request before a model loads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import _Config, _require, _validated
from .errors import InputError, TooManyInstances

INCLUDE, EXCLUDE = 1, 0
_PROMPT_KEYS = ("points", "labels", "box")
_FORMAT = (
    'give each instance {"points": [[x, y], ...], "labels": [1 or 0, ...]} and/or '
    '{"box": [x0, y0, x1, y1]}, in image pixels'
)


@dataclass(frozen=True)
class SegmentConfig(_Config):
    """Limits of a segmentation request, the embedding cache, and automatic proposals."""

    max_instances: int = 8  # instances per request (learning's own default limit)
    max_points: int = 16  # points per instance
    # images whose embedding is kept for the next click (least recently used dropped first)
    embedding_cache_size: int = 4
    # --- proposals: a grid of points, each point's best mask, filtered, de-duplicated
    points_per_side: int = 16  # the grid has points_per_side**2 points
    points_per_batch: int = 64  # grid points decoded together
    min_predicted_iou: float = 0.88  # the model's own estimate of the mask's quality
    min_stability: float = 0.95  # IoU of the mask thresholded at -offset and +offset
    stability_offset: float = 1.0  # in logits
    dedupe_iou: float = 0.7  # a candidate overlapping a better one more than this is dropped
    max_proposals: int = 32
    min_area_share: float = 0.0  # drop candidates covering less of the image than this

    def __post_init__(self) -> None:
        _validated(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        for name in ("max_instances", "max_points", "embedding_cache_size", "max_proposals"):
            _require(getattr(self, name) >= 1, name, "a number >= 1")
        _require(1 <= self.points_per_side <= 64, "points_per_side", "a number from 1 to 64")
        _require(self.points_per_batch >= 1, "points_per_batch", "a number >= 1")
        for name in ("min_predicted_iou", "min_stability", "dedupe_iou", "min_area_share"):
            _require(0.0 <= getattr(self, name) <= 1.0, name, "a number in [0, 1]")
        _require(self.stability_offset >= 0.0, "stability_offset", "a number >= 0")


@dataclass(frozen=True)
class InstancePrompt:
    """One instance's prompts, checked: points with their labels, and/or a box, in pixels."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None


PromptLike = InstancePrompt | Mapping[str, Any]


def check_prompts(
    prompts: Sequence[PromptLike], size: tuple[int, int], config: SegmentConfig
) -> tuple[InstancePrompt, ...]:
    """The prompts of each instance, in order, checked against an image of `size` (width,
    height) and the config's limits; InputError naming the field otherwise."""
    if isinstance(prompts, Mapping | InstancePrompt | str | bytes) or not isinstance(
        prompts, Sequence
    ):
        raise InputError(
            "prompts must be a list with one entry per instance.", field="prompts", fix=_FORMAT
        )
    if len(prompts) == 0:
        raise InputError("No prompts were given.", field="prompts", fix=_FORMAT)
    if len(prompts) > config.max_instances:
        raise TooManyInstances(
            f"{len(prompts)} instances were asked for, more than max_instances "
            f"({config.max_instances}).",
            field="prompts",
            fix=f"ask for at most {config.max_instances} instances per request",
        )
    return tuple(_instance(p, f"prompts[{i}]", size, config) for i, p in enumerate(prompts))


def _instance(
    prompt: PromptLike, field: str, size: tuple[int, int], config: SegmentConfig
) -> InstancePrompt:
    if isinstance(prompt, InstancePrompt):
        prompt = {"points": prompt.points, "labels": prompt.labels, "box": prompt.box}
    if not isinstance(prompt, Mapping):
        raise InputError(f"{field} must be an object.", field=field, fix=_FORMAT)
    unknown = sorted(str(k) for k in prompt if k not in _PROMPT_KEYS)
    if unknown:
        raise InputError(
            f"{field} has unknown key(s): {', '.join(unknown)}.",
            field=f"{field}.{unknown[0]}",
            fix=f"use only {', '.join(_PROMPT_KEYS)}",
        )
    points = _points(prompt.get("points"), f"{field}.points", size, config)
    labels = _labels(prompt.get("labels"), len(points), f"{field}.labels")
    box = None if prompt.get("box") is None else _box(prompt["box"], f"{field}.box", size)
    if not points and box is None:
        raise InputError(f"{field} has neither points nor a box.", field=field, fix=_FORMAT)
    if box is None and INCLUDE not in labels:
        raise InputError(
            f"{field} has only exclude points (label 0): nothing says where the instance is.",
            field=f"{field}.labels",
            fix="add at least one include point (label 1) on the instance, or a box",
        )
    return InstancePrompt(points=points, labels=labels, box=box)


def _points(
    value: Any, field: str, size: tuple[int, int], config: SegmentConfig
) -> tuple[tuple[float, float], ...]:
    if value is None:
        return ()
    if not _is_list(value):
        raise InputError(f"{field} must be a list of [x, y] pairs.", field=field, fix=_FORMAT)
    if len(value) > config.max_points:
        raise InputError(
            f"{field} has {len(value)} points, more than max_points ({config.max_points}).",
            field=field,
            fix=f"give at most {config.max_points} points per instance",
        )
    width, height = size
    points = []
    for j, point in enumerate(value):
        x, y = _numbers(point, 2, f"{field}[{j}]", "[x, y]")
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(
                f"{field}[{j}] ({x:g}, {y:g}) lies outside the {width}x{height} image.",
                field=f"{field}[{j}]",
                fix=f"give x in [0, {width}) and y in [0, {height}), in the image's pixels",
            )
        points.append((x, y))
    return tuple(points)


def _labels(value: Any, count: int, field: str) -> tuple[int, ...]:
    if value is None:
        return (INCLUDE,) * count  # no labels: every point includes
    if not _is_list(value):
        raise InputError(f"{field} must be a list of 1 and 0.", field=field, fix=_FORMAT)
    if len(value) != count:
        raise InputError(
            f"{field} has {len(value)} labels for {count} points.",
            field=field,
            fix="give one label per point, in point order (1 include, 0 exclude)",
        )
    for j, label in enumerate(value):
        if isinstance(label, bool) or label not in (INCLUDE, EXCLUDE):
            raise InputError(
                f"{field}[{j}] is {label!r}; a label is 1 (include) or 0 (exclude).",
                field=f"{field}[{j}]",
                fix="label each point 1 (on the instance) or 0 (not on it)",
            )
    return tuple(int(label) for label in value)


def _box(value: Any, field: str, size: tuple[int, int]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = _numbers(value, 4, field, "[x0, y0, x1, y1]")
    if x1 <= x0 or y1 <= y0:
        raise InputError(
            f"{field} [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is inverted or empty: x1 must be above "
            "x0 and y1 above y0.",
            field=field,
            fix="give the top-left corner first, then the bottom-right one",
        )
    width, height = size
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise InputError(
            f"{field} [{x0:g}, {y0:g}, {x1:g}, {y1:g}] reaches outside the {width}x{height} image.",
            field=field,
            fix=f"keep the box inside [0, {width}] x [0, {height}], in the image's pixels",
        )
    return x0, y0, x1, y1


def _numbers(value: Any, count: int, field: str, shape: str) -> tuple[float, ...]:
    """`count` finite numbers (not booleans), or InputError naming `field`."""
    ok = _is_list(value) and len(value) == count
    if ok:
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ok = ok and all(_finite(v) for v in value)
    if not ok:
        raise InputError(
            f"{field} must be {count} finite numbers {shape}, not {value!r}.",
            field=field,
            fix=_FORMAT,
        )
    return tuple(float(v) for v in value)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | Mapping)
