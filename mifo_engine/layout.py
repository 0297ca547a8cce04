"""Prompt and box validation for synthesis; torch-free so the HTTP API can call it.

Boxes are `[x0, y0, x1, y1]` in [0, 1] of the image width and height, keyed by a concept
token (`<asset0>`) or by the instance name given at learning time. Overlapping boxes are
allowed: a pixel in two boxes may show either subject.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import LayoutError

TOKEN_PATTERN = re.compile(r"<asset\d+>")
MAX_PROMPT_TOKENS = 77  # CLIP context, start and end tokens included


@dataclass(frozen=True)
class Subject:
    """One boxed token of the prompt."""

    token: str
    name: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Layout:
    """A validated request: the prompt and its boxed subjects, in prompt order."""

    prompt: str
    subjects: tuple[Subject, ...]


def validate_synthesis_request(
    concept_meta: Mapping[str, Any],
    prompt: str,
    boxes: Mapping[str, Sequence[float]] | None,
    tokenizer: Any,
) -> Layout:
    """Check a prompt and its boxes against a concept; raise LayoutError naming the field."""
    tokens = {t["token"]: t["name"] for t in concept_meta["tokens"]}
    by_name = {t["name"]: t["token"] for t in concept_meta["tokens"]}
    known = ", ".join(f"{tok} ({name})" for tok, name in tokens.items())
    if not isinstance(prompt, str) or not prompt.strip():
        raise LayoutError(
            "The prompt is empty.",
            field="prompt",
            fix="describe the scene, e.g. 'a photo of <asset0> at the beach'",
        )
    for tok in TOKEN_PATTERN.findall(prompt):
        if tok not in tokens:
            raise LayoutError(
                f"The prompt names {tok}, which this concept does not have.",
                field="prompt",
                fix=f"use only this concept's tokens: {known}",
            )
    count = count_prompt_tokens(prompt, tokenizer)
    if count > MAX_PROMPT_TOKENS:
        raise LayoutError(
            f"The prompt is {count} tokens long; the limit is {MAX_PROMPT_TOKENS} (start and end tokens included).",
            field="prompt",
            fix="shorten the prompt",
        )

    in_prompt = TOKEN_PATTERN.findall(prompt)
    resolved: dict[str, tuple[float, float, float, float]] = {}
    for key, box in (boxes or {}).items():
        token = key if key in tokens else by_name.get(key)
        if token is None:
            raise LayoutError(
                f"Box key '{key}' is neither a token nor an instance name of this concept.",
                field=f"boxes[{key}]",
                fix=f"key boxes by one of: {known}",
            )
        if token in resolved:
            raise LayoutError(
                f"Two boxes given for {token} ({tokens[token]}).",
                field=f"boxes[{key}]",
                fix="give one box per token",
            )
        if token not in in_prompt:
            raise LayoutError(
                f"Box for {token} but the prompt does not mention {token}.",
                field=f"boxes[{key}]",
                fix=f"add {token} to the prompt or remove its box",
            )
        resolved[token] = _check_box(key, box, int(concept_meta["coarsest_attention_resolution"]))
    order = sorted(resolved, key=in_prompt.index)
    return Layout(prompt, tuple(Subject(t, tokens[t], resolved[t]) for t in order))


def count_prompt_tokens(prompt: str, tokenizer: Any) -> int:
    """CLIP tokens of a prompt, counting each concept token as one and the start/end tokens."""
    count = 2
    for piece in TOKEN_PATTERN.split(prompt):
        if piece.strip():
            count += len(tokenizer(piece, add_special_tokens=False).input_ids)
    return count + len(TOKEN_PATTERN.findall(prompt))


def _check_box(key: str, box: Any, coarsest: int) -> tuple[float, float, float, float]:
    field = f"boxes[{key}]"
    if (
        not isinstance(box, list | tuple)
        or len(box) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
    ):
        raise LayoutError(
            f"Box {box!r} is not four numbers.",
            field=field,
            fix="give [x0, y0, x1, y1] as fractions of the width and height",
        )
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise LayoutError(
            f"Box {list(box)} has coordinates outside [0, 1].",
            field=field,
            fix="give coordinates as fractions of the image, between 0 and 1",
        )
    if x0 >= x1 or y0 >= y1:
        raise LayoutError(
            f"Box {list(box)} is inverted or empty (need x0 < x1 and y0 < y1).",
            field=field,
            fix="order the corners as [left, top, right, bottom]",
        )
    cell = 1.0 / coarsest
    if (x1 - x0) < cell or (y1 - y0) < cell:
        raise LayoutError(
            f"Box {list(box)} is smaller than one cell of the coarsest controlled layer ({coarsest}x{coarsest}).",
            field=field,
            fix=f"make the box at least {cell:.3f} wide and high",
        )
    return (x0, y0, x1, y1)
