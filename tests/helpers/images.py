"""Synthetic scenes and mask files for tests: seeded, built in code, a few KB each."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# exif_transpose applies these for each EXIF orientation; storing pixels with the inverse
# makes a file that turns back into the original when opened upright.
_STORE_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def make_scene(
    width: int = 96, height: int = 80, n: int = 2, seed: int = 0
) -> tuple[Image.Image, list[Image.Image]]:
    """An RGB scene with `n` similar reddish blobs on a textured background, and their L masks.

    The blobs sit on a grid inside the centred square, so they survive centre cropping; each
    mask is 255 on its blob and 0 elsewhere.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    background = np.stack(
        [
            90 + 40 * np.sin(xx / 7.0),
            110 + 30 * np.cos(yy / 5.0),
            70 + 60 * xx / max(width, 1),
        ],
        axis=-1,
    )
    pixels = background + rng.normal(0.0, 12.0, size=(height, width, 3))
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cell_w, cell_h = side / cols, side / rows
    radius = 0.3 * min(cell_w, cell_h)
    masks = []
    for i in range(n):
        cx = left + (i % cols + 0.5) * cell_w + rng.uniform(-0.05, 0.05) * cell_w
        cy = top + (i // cols + 0.5) * cell_h + rng.uniform(-0.05, 0.05) * cell_h
        inside = ((xx - cx) / radius) ** 2 + ((yy - cy) / (0.85 * radius)) ** 2 <= 1.0
        colour = np.array([200.0 - 12 * i, 60.0 + 15 * i, 50.0 + 5 * i])
        shading = 1.0 - 0.3 * (yy - (cy - radius)) / (2 * radius)
        blob = colour[None, None, :] * shading[..., None]
        pixels = np.where(inside[..., None], blob, pixels)
        masks.append(Image.fromarray((inside * 255).astype(np.uint8)))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image, masks


def make_wide_scene(seed: int = 0) -> tuple[Image.Image, list[Image.Image]]:
    """A non-square 643x512 scene (an odd width, so centring has a remainder) with two blobs."""
    return make_scene(width=643, height=512, n=2, seed=seed)


def mask_as_rgb(mask: Image.Image) -> Image.Image:
    """White on black, as an RGB image."""
    return mask.convert("RGB")


def mask_as_rgba_alpha(mask: Image.Image, colour: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """An alpha-only mask: constant colour everywhere, the shape in the alpha channel."""
    rgba = Image.new("RGBA", mask.size, (*colour, 0))
    rgba.putalpha(mask.convert("L"))
    return rgba


def mask_as_rgba_white_on_black(mask: Image.Image) -> Image.Image:
    """White on black with a fully opaque alpha channel."""
    rgba = mask.convert("RGB").convert("RGBA")
    rgba.putalpha(255)
    return rgba


def mask_as_cutout(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The scene's pixels with the mask as alpha, as a background remover would export it."""
    rgba = image.convert("RGBA")
    rgba.putalpha(mask.convert("L"))
    return rgba


def mask_as_mode(mask: Image.Image, mode: str) -> Image.Image:
    """The same mask in another PIL mode: '1', 'P', 'LA', 'I;16' or 'I'."""
    values = np.asarray(mask.convert("L"))
    if mode == "I;16":
        return Image.fromarray(values.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(values.astype(np.int32) * 257)
    if mode == "P":
        return mask.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    return mask.convert(mode)


def mask_as_jpeg(mask: Image.Image, quality: int = 70, mode: str = "L") -> Image.Image:
    """The mask after a JPEG round trip, with its compression noise (ringing at the edges)."""
    data = encode(mask.convert(mode), "JPEG", quality=quality)
    return Image.open(io.BytesIO(data))


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    """The image as file bytes in the given format."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def with_exif_orientation(image: Image.Image, orientation: int, fmt: str = "PNG") -> bytes:
    """File bytes whose pixels are stored turned, with an EXIF tag that turns them back."""
    transpose = _STORE_FOR_ORIENTATION[orientation]
    stored = image if transpose is None else image.transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    options: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        options["quality"] = 95
    return encode(stored, fmt, **options)
