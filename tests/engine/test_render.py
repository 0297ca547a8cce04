"""Layout previews: each box in its token's colour, the same whatever the prompt boxes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mifo_engine.render import MIN_PREVIEW_SIDE, PALETTE, layout_preview

GREY = Image.new("RGB", (64, 64), (128, 128, 128))
TOKENS = ["<asset0>", "<asset1>", "<asset2>"]


def _colour_at(preview: Image.Image, x: float, y: float) -> tuple[int, ...]:
    """The pixel on a box's left edge, at fractions x, y of the preview."""
    return tuple(np.asarray(preview)[round(y * preview.height), round(x * preview.width)])


def test_a_token_keeps_its_colour_whatever_else_is_boxed() -> None:
    both = layout_preview(
        GREY, {"<asset2>": [0.1, 0.2, 0.4, 0.9], "<asset0>": [0.6, 0.2, 0.9, 0.9]}, {}, TOKENS
    )
    alone = layout_preview(GREY, {"<asset2>": [0.1, 0.2, 0.4, 0.9]}, {}, TOKENS)
    assert both.size == (MIN_PREVIEW_SIDE, MIN_PREVIEW_SIDE)  # enlarged to stay readable
    assert _colour_at(both, 0.1, 0.6) == _colour_at(alone, 0.1, 0.6) == PALETTE[2]
    assert _colour_at(both, 0.6, 0.6) == PALETTE[0]


def test_without_an_order_colours_follow_the_boxes() -> None:
    preview = layout_preview(GREY, {"x": [0.1, 0.2, 0.4, 0.9], "y": [0.6, 0.2, 0.9, 0.9]}, {})
    assert _colour_at(preview, 0.1, 0.6) == PALETTE[0]
    assert _colour_at(preview, 0.6, 0.6) == PALETTE[1]
