"""Labels in any script: each character drawn by a font that holds it, never clipped."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mifo_engine import fonts
from mifo_engine.render import layout_preview

WORDS = ["lézard", "Ærø Straße", "Ωμέγα", "ящерица", "蜥蜴", "とかげ", "도마뱀"]


@pytest.mark.parametrize("word", WORDS)
def test_every_character_of_a_name_is_drawn_by_a_font_that_holds_it(word: str) -> None:
    chain = fonts.font_chain(16)
    for piece, font in chain.runs(word):
        face = next(f for f in chain.faces if f.font is font)
        assert face.characters is not None, f"{piece!r} fell to the last resort"
        assert all(ord(c) in face.characters for c in piece)


def test_latin_text_stays_in_one_font_and_other_scripts_switch() -> None:
    chain = fonts.font_chain(16)
    assert len(chain.runs("lézard Ærø")) == 1
    assert [p for p, _ in chain.runs("cat 猫 dog")] == ["cat ", "猫", " dog"]


def test_a_character_no_font_holds_gets_its_block_symbol_not_an_error() -> None:
    chain = fonts.font_chain(16)
    (piece, font), *_ = chain.runs("\U0001f98e")  # an emoji: no packaged font has it
    assert font is chain.faces[-1].font and chain.faces[-1].characters is None


def _white_pixels(image: Image.Image) -> int:
    return int((np.asarray(image) >= 250).all(axis=-1).sum())


@pytest.mark.parametrize("box", [[0.7, 0.4, 1.0, 0.6], [0.4, 0.9, 0.6, 1.0], [0.8, 0.9, 1.0, 1.0]])
def test_a_label_near_an_edge_moves_inside_the_image_whole(box: list[float]) -> None:
    grey = Image.new("RGB", (256, 256), (100, 100, 100))
    name = "lézard 蜥蜴 on the edge"
    roomy = layout_preview(grey, {"a": [0.0, 0.0, 0.2, 0.2]}, {"a": name})
    edge = layout_preview(grey, {"a": box}, {"a": name})
    assert _white_pixels(edge) == _white_pixels(roomy) > 0  # the same text, none cut off


def test_without_the_font_packages_pillow_s_own_font_draws(monkeypatch) -> None:
    monkeypatch.setattr(fonts, "FONT_FILES", (("no_such_package", "x.ttf"),))
    monkeypatch.setattr(fonts, "LAST_RESORT", ("no_such_package", "y.ttf"))
    fonts.font_chain.cache_clear()
    try:
        chain = fonts.font_chain(12)
        assert len(chain.faces) == 1 and chain.faces[0].characters is None
        preview = layout_preview(Image.new("RGB", (64, 64)), {"a": [0, 0, 1, 1]}, {"a": "cat"})
        assert _white_pixels(preview) > 0
    finally:
        fonts.font_chain.cache_clear()
