"""Checks on free text and free-form JSON that a request stores and every later read echoes:
instance names, the prompt, and `options`."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

# The deepest valid options nest 3 levels (synthesis {"loss_layers": [["mid", 8]]}); 8 leaves room and
# stays far below the ~1000 levels at which Python's JSON parser gives up (a 500 otherwise).
MAX_OPTIONS_DEPTH = 8
# Every LearnConfig / SynthesisConfig field set to its default is about 1.2 KB of JSON;
# options are stored with the job and echoed in each read of it.
MAX_OPTIONS_BYTES = 16 * 1024

# Control characters (C0, DEL, C1) and the bidirectional formatting characters: embeddings
# and overrides (U+202A-U+202E), isolates (U+2066-U+2069) and the marks (U+200E, U+200F,
# U+061C). None has a meaning in a prompt or a label; the bidi ones make text display in
# another order than it reads (names are drawn on previews and shown by clients).
FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def forbidden_character(text: str) -> str | None:
    """A sentence naming the first forbidden character of `text` and where it is, or None."""
    found = FORBIDDEN.search(text)
    if found is None:
        return None
    char = found.group()
    name = unicodedata.name(char, "a control character")
    return f"contains U+{ord(char):04X} ({name}) at character {found.start() + 1}"


TEXT_FIX = (
    "remove control characters (line breaks and tabs included: use spaces) and bidirectional "
    "formatting characters (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C)"
)


def depth(value: Any) -> int:
    """How many arrays and objects nest in `value` (a scalar is 0, `{}` is 1); no recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_OPTIONS_DEPTH:  # enough to refuse: stop walking
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def options_problem(options: Any, size: int | None = None) -> tuple[str, str] | None:
    """(detail, fix) when options nest too deep or are too large, else None.

    `size`: the bytes the client sent, when known; else the compact JSON of `options`."""
    if size is None:
        size = len(json.dumps(options, separators=(",", ":")).encode())
    if size > MAX_OPTIONS_BYTES:
        return (
            f"options are {size} bytes of JSON; at most {MAX_OPTIONS_BYTES} are accepted.",
            "set only the fields you need to change (defaults fill the rest)",
        )
    if depth(options) > MAX_OPTIONS_DEPTH:
        return too_deep()
    return None


def too_deep() -> tuple[str, str]:
    return (
        f"options nest arrays and objects more than {MAX_OPTIONS_DEPTH} levels deep.",
        f"nest at most {MAX_OPTIONS_DEPTH} levels; option values are numbers, strings, "
        'lists of them or pairs such as {"loss_layers": [["mid", 8]]}',
    )
