"""Inputs as they are stored: every upload kept as PNG (lossless), whatever format it came in."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from core import engine

# Modes PIL's PNG writer stores as they are.
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B"})


def as_png(data: bytes, mask_threshold: float | None) -> bytes:
    """Inputs are kept as PNG (lossless), whatever format they came in, meaning to the engine
    what the upload meant: upright (PNG keeps no EXIF orientation of the original) and, for a
    mode PNG cannot store (CMYK, YCbCr, LAB, 32-bit...), as the engine reads it: the image
    as its RGB view, a mask (`mask_threshold` given) as its foreground, white on black."""
    with Image.open(io.BytesIO(data)) as original:
        if original.format == "PNG":
            return data
        img = engine.load_image(original, field="image")
        if img.mode not in PNG_MODES:
            if mask_threshold is None:
                img = engine.to_rgb(img)
            else:
                foreground = engine.mask_to_binary(img, mask_threshold)
                img = Image.fromarray(foreground.astype(np.uint8) * 255)
        out = io.BytesIO()
        img.save(out, format="PNG")
        return out.getvalue()
