"""Pictures for people: attention heat maps and layout previews."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .fonts import font_chain

# A short perceptual colour ramp (dark blue -> cyan -> yellow -> red) for heat maps.
_RAMP = np.array(
    [[0, 0, 80], [0, 90, 200], [0, 200, 200], [250, 230, 0], [230, 30, 0]], dtype=np.float32
)
MIN_PREVIEW_SIDE = 256
PALETTE = (
    (230, 60, 60),
    (40, 120, 230),
    (40, 170, 70),
    (240, 160, 20),
    (160, 60, 200),
    (20, 170, 170),
    (200, 90, 140),
    (120, 120, 120),
)


def heat_map(attention: torch.Tensor, image: Image.Image, *, opacity: float = 0.6) -> Image.Image:
    """Overlay a (h, w) attention map, normalised to its maximum, on `image`."""
    a = attention.detach().float().cpu()
    a = a / a.max().clamp_min(1e-12)
    up = torch.nn.functional.interpolate(
        a[None, None], size=(image.height, image.width), mode="bilinear", align_corners=False
    )[0, 0]
    x = up.clamp(0, 1).numpy() * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    frac = (x - lo)[..., None]
    colour = _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = base * (1 - opacity) + colour * opacity
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def layout_preview(
    image: Image.Image,
    boxes: Mapping[str, Sequence[float]],
    labels: Mapping[str, str],
    order: Sequence[str] = (),
) -> Image.Image:
    """Draw each box (normalised coordinates) and its label on a copy of `image`.

    A token's colour is PALETTE at its place in `order` (the concept's tokens), so that a
    token keeps its colour whatever the prompt boxes; a token not in it, at its place among
    the boxes. Small images are enlarged first (nearest neighbour) so labels stay readable.
    """
    out = image.convert("RGB")
    scale = max(1, -(-MIN_PREVIEW_SIDE // min(out.size)))
    out = (
        out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
        if scale > 1
        else out.copy()
    )
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 128))
    fonts = font_chain(max(11, round(min(out.size) / 24)))
    places = {token: k for k, token in enumerate(order)}
    for k, (token, (x0, y0, x1, y1)) in enumerate(boxes.items()):
        colour = PALETTE[places.get(token, k) % len(PALETTE)]
        rect = (x0 * out.width, y0 * out.height, x1 * out.width - 1, y1 * out.height - 1)
        draw.rectangle(rect, outline=colour, width=width)
        _label(draw, fonts, labels.get(token, token), (rect[0] + width, rect[1] + width), colour)
    return out


def _label(draw: ImageDraw.ImageDraw, fonts, text: str, at: tuple[float, float], colour) -> None:
    """A filled tag with `text` at `at`, moved left or up as far as needed to stay inside."""
    ascent, descent = fonts.metrics()
    pad = max(1, (ascent + descent) // 8)
    w, h = fonts.width(text) + 2 * pad, ascent + descent + 2 * pad
    image_w, image_h = draw.im.size
    x = max(0.0, min(at[0], image_w - w))
    y = max(0.0, min(at[1], image_h - h))
    draw.rectangle((x, y, x + w - 1, y + h - 1), fill=colour)
    fonts.draw(draw, (x + pad, y + pad), text, (255, 255, 255))
