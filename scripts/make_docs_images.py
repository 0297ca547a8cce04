"""Regenerate docs/layout-preview.png: a layout preview from the tiny model.

The tiny model has random weights, so the generated pixels are noise; the picture shows
what a preview draws (each box with its token and instance name), not image quality.
Run: .venv/bin/python scripts/make_docs_images.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import mifo_engine as me

ROOT = Path(__file__).resolve().parent.parent


def scene() -> tuple[Image.Image, list[Image.Image]]:
    """Two toy-like blobs on a plain floor."""
    h, w = 80, 96
    img = np.full((h, w, 3), (190, 180, 160), np.uint8)
    masks = []
    for x0, colour in ((10, (200, 60, 50)), (55, (60, 90, 200))):
        img[25:60, x0 : x0 + 30] = colour
        m = np.zeros((h, w), np.uint8)
        m[25:60, x0 : x0 + 30] = 255
        masks.append(Image.fromarray(m))
    return Image.fromarray(img), masks


def main() -> None:
    base = me.load_base_model("tiny")  # random test model: pixels are noise
    image, masks = scene()
    concept = me.learn(
        base,
        image,
        masks,
        names=["red car", "blue car"],
        config=me.LearnConfig(phase1_steps=4, reward_steps=1, phase2_steps=0),
    )
    result = me.synthesize(
        base,
        concept,
        "a photo of <asset0> and <asset1> at the beach",
        {"<asset0>": (0.05, 0.30, 0.45, 0.80), "blue car": (0.55, 0.30, 0.95, 0.80)},
        config=me.SynthesisConfig(steps=10),
    )
    out = ROOT / "docs" / "layout-preview.png"
    result.previews[0].save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
