"""Input preparation (METHOD section 1): one image and N instance masks on the same square.

Only numpy and PIL are needed to validate inputs (`check_inputs`), so the HTTP front end can
reject bad uploads before a job is queued; `prepare_inputs` adds the tensors the learner uses.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import LearnConfig
from .errors import (
    ConfigError,
    EmptyMask,
    InputError,
    InstanceTooSmall,
    MaskSizeMismatch,
    MasksOverlap,
    TooManyInstances,
    UnreadableImage,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ImageSource = str | Path | bytes | Image.Image
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
_READ_FIX = "upload a PNG or JPEG file"


@dataclass(frozen=True)
class PreparedInputs:
    """The image and masks on the R x R square the method works on."""

    image: torch.Tensor  # (3, R, R) float32 in [-1, 1]
    masks: torch.Tensor  # (N, R, R) float32 in {0, 1}
    image_rgb: Image.Image  # the R x R RGB crop, for attention heat maps
    shares: tuple[float, ...]  # each instance's share of the R x R square


def load_image(source: ImageSource, *, field: str) -> Image.Image:
    """Open a path, bytes or PIL image, decoded and turned upright by its EXIF orientation."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, str | Path | bytes | bytearray):
        image = _open(source, field)
    else:
        raise UnreadableImage(
            f"{field} must be a file path, bytes or a PIL image, not {type(source).__name__}.",
            field=field,
            fix=_READ_FIX,
        )
    if image.width < 1 or image.height < 1:
        raise UnreadableImage(f"{field} has no pixels.", field=field, fix=_READ_FIX)
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception as exc:  # PIL raises assorted types for damaged EXIF blocks
        raise UnreadableImage(
            f"{field} has damaged EXIF data ({exc}).",
            field=field,
            fix="re-export the file without EXIF data, turned the right way up",
        ) from exc
    return upright if upright is not None else image


# A colour channel counts as a black-and-white mask when nearly all of it is near black or near
# white (JPEG ringing leaves a thin grey seam); a scene photo is far from that.
BW_DARK, BW_LIGHT, BW_SHARE = 0.15, 0.85, 0.97


def mask_to_binary(mask: Image.Image, threshold: float) -> np.ndarray:
    """Foreground of a mask (bool H x W): luminance, or alpha where the colour carries no shape.

    A fully opaque mask (white on black, in any mode) is read by its luminance. With
    transparency: alpha when the colour is constant (alpha-only masks) or is a picture (a
    cut-out of the scene); when the colour is itself a black-and-white mask, a pixel must be
    light and opaque.
    """
    if mask.mode == "1":
        return np.array(mask, dtype=bool)
    if mask.mode in ("P", "PA") or "transparency" in mask.info:
        mask = mask.convert("RGBA")
    if mask.mode == "F" or mask.mode.startswith("I"):
        values = np.asarray(mask, dtype=np.float64)
        return values > threshold * _full_scale(mask.mode, values)
    luminance = np.asarray(mask.convert("L"), dtype=np.float64) / 255.0
    if "A" in mask.getbands():
        alpha = np.asarray(mask.getchannel("A"), dtype=np.float64) / 255.0
        if (alpha <= threshold).any():
            if _is_black_and_white(luminance):
                return (luminance > threshold) & (alpha > threshold)
            return alpha > threshold
    return luminance > threshold


def _is_black_and_white(luminance: np.ndarray) -> bool:
    """Whether the colour holds a two-tone mask (not one flat colour, not a photo)."""
    dark = luminance < BW_DARK
    light = luminance > BW_LIGHT
    return bool(dark.any() and light.any() and (dark | light).mean() >= BW_SHARE)


def check_inputs(
    image: ImageSource,
    masks: Sequence[ImageSource],
    *,
    resolution: int,
    config: LearnConfig,
) -> tuple[float, ...]:
    """Validate an image and its masks without torch; return each instance's share."""
    return _prepare(image, masks, resolution=resolution, config=config)[2]


def prepare_inputs(
    image: ImageSource,
    masks: Sequence[ImageSource],
    *,
    resolution: int,
    config: LearnConfig,
) -> PreparedInputs:
    """Load, validate and centre-crop an image and its masks to `resolution` (METHOD 1)."""
    import torch

    rgb, binary, shares = _prepare(image, masks, resolution=resolution, config=config)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32).copy())
    return PreparedInputs(
        image=(pixels / 127.5 - 1.0).permute(2, 0, 1).contiguous(),
        masks=torch.from_numpy(binary.astype(np.float32)),
        image_rgb=rgb,
        shares=shares,
    )


def _prepare(
    image: ImageSource,
    masks: Sequence[ImageSource],
    *,
    resolution: int,
    config: LearnConfig,
) -> tuple[Image.Image, np.ndarray, tuple[float, ...]]:
    _check_request(masks, resolution=resolution, config=config)
    picture = load_image(image, field="image")
    width, height = picture.size
    if min(width, height) < resolution:
        logger.warning(
            "The image is %dx%d: upscaled to %dx%d, it will look soft",
            width,
            height,
            resolution,
            resolution,
        )
    box = _centre_square(width, height)
    rgb = to_rgb(picture).resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
    binaries = [
        _square_mask(mask, i, picture.size, box, resolution, config) for i, mask in enumerate(masks)
    ]
    shares = tuple(float(b.mean()) for b in binaries)
    _check_shares(shares, resolution=resolution, config=config)
    _check_overlaps(binaries, config=config)
    return rgb, np.stack(binaries), shares


def _check_request(masks: Sequence[ImageSource], *, resolution: int, config: LearnConfig) -> None:
    """Refuse a resolution or a mask list that cannot be a learning request."""
    if resolution < 1:
        raise ConfigError(
            f"resolution must be positive, not {resolution}.",
            field="resolution",
            fix="pass the base model's native resolution (512 for SD 2.1)",
        )
    if isinstance(masks, str | Path | bytes | bytearray | Image.Image):
        raise InputError(
            "masks must be a list with one mask per instance, not a single file.",
            field="masks",
            fix="pass a list, e.g. [mask0] for one instance",
        )
    if len(masks) == 0:
        raise InputError(
            "No instance masks were given.",
            field="masks",
            fix="give one mask per instance: white (or opaque) on the instance, black elsewhere",
        )
    if len(masks) > config.max_instances:
        raise TooManyInstances(
            f"{len(masks)} masks were given, more than max_instances ({config.max_instances}).",
            field="masks",
            fix=f"give at most {config.max_instances} masks, or raise max_instances",
        )


def _check_shares(shares: Sequence[float], *, resolution: int, config: LearnConfig) -> None:
    """Refuse an instance below min_instance_share of the square; warn below warn_instance_share."""
    for i, share in enumerate(shares):
        field = f"masks[{i}]"
        if share < config.min_instance_share:
            raise InstanceTooSmall(
                f"{field} covers {share:.2%} of the {resolution}x{resolution} square, less than "
                f"min_instance_share ({config.min_instance_share:.2%}).",
                field=field,
                fix="use a closer view in which the instance is larger, or lower "
                "min_instance_share",
            )
        if share < config.warn_instance_share:
            logger.warning(
                "%s covers only %.2f%% of the image (warning below %.2f%%): its token may learn "
                "little of its appearance",
                field,
                100 * share,
                100 * config.warn_instance_share,
            )


def mask_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _check_overlaps(binaries: Sequence[np.ndarray], *, config: LearnConfig) -> None:
    """Refuse two masks so alike that their instances cannot be told apart (the same mask
    sent twice, say): their tokens would learn one thing, and every diagnostic would blur."""
    for j in range(len(binaries)):
        for i in range(j):
            overlap = mask_overlap(binaries[i], binaries[j])
            if overlap > config.max_mask_overlap:
                raise MasksOverlap(
                    f"masks[{i}] and masks[{j}] share {overlap:.0%} of their pixels "
                    f"(intersection over union), more than max_mask_overlap "
                    f"({config.max_mask_overlap:.0%}): the two instances cannot be told apart.",
                    field=f"masks[{j}]",
                    fix=f"paint masks[{j}] over its own instance only (each mask one instance)",
                )


def _square_mask(
    source: ImageSource,
    index: int,
    image_size: tuple[int, int],
    box: tuple[int, int, int, int],
    resolution: int,
    config: LearnConfig,
) -> np.ndarray:
    """One mask, thresholded at full size, then cropped and scaled (nearest) like the image."""
    field = f"masks[{index}]"
    mask = load_image(source, field=field)
    if mask.size != image_size:
        (mw, mh), (iw, ih) = mask.size, image_size
        hint = (
            " The sizes are swapped: one file probably carries an EXIF rotation the other lacks."
            if mask.size == image_size[::-1]
            else ""
        )
        raise MaskSizeMismatch(
            f"{field} is {mw}x{mh} pixels but the image is {iw}x{ih}.{hint}",
            field=field,
            fix=f"export every mask at exactly the image's size ({iw}x{ih}), upright",
        )
    # Thresholding before resizing keeps compression noise and soft edges out of the result.
    binary = mask_to_binary(mask, config.mask_threshold)
    if not binary.any():
        raise EmptyMask(
            f"{field} is empty: no pixel is above {config.mask_threshold:.0%} luminance (or "
            "alpha).",
            field=field,
            fix="paint the instance white (or opaque) on black (or transparent); check that the "
            "mask is not blank or inverted",
        )
    left, top, right, bottom = box
    if not binary[top:bottom, left:right].any():
        raise EmptyMask(
            f"{field}: the instance lies entirely outside the centred {right - left}x"
            f"{bottom - top} square that is kept of the {image_size[0]}x{image_size[1]} image.",
            field=field,
            fix="crop the image and its masks yourself so that every instance lies inside the "
            "square you want, or pad the image to a square",
        )
    layer = Image.fromarray(binary.astype(np.uint8) * 255)
    scaled = np.asarray(layer.resize((resolution, resolution), Image.Resampling.NEAREST, box=box))
    if not scaled.any():
        raise InstanceTooSmall(
            f"{field}: the instance vanishes when the image is scaled to "
            f"{resolution}x{resolution} (it covers less than one pixel there).",
            field=field,
            fix="use a closer view in which the instance is larger",
        )
    return scaled > 127


def _centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square (left, top, right, bottom) whose side is the shorter image side."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; high bit depths are scaled, transparency is flattened onto white."""
    if image.mode == "F" or image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(values / _full_scale(image.mode, values) * 255.0 + 0.5, 0, 255)
        image = Image.fromarray(scaled.astype(np.uint8))
    if image.mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if "A" in image.getbands():
        # Transparent pixels have no meaningful colour; white is what viewers show behind them.
        backdrop = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(backdrop, image.convert("RGBA"))
    return image.convert("RGB")


def _full_scale(mode: str, values: np.ndarray) -> float:
    """The value of white in a 16-bit, 32-bit or float image."""
    if mode == "F":
        return 1.0 if values.size == 0 or values.max() <= 1.0 else 255.0
    if mode.startswith("I;16") or (values.size and values.max() > 255):
        return 65535.0
    return 255.0


def _open(source: str | Path | bytes | bytearray, field: str) -> Image.Image:
    """Decode a file or byte string; the format is told by the content, never the name."""
    where = "the uploaded bytes" if isinstance(source, bytes | bytearray) else f"'{source}'"
    try:
        if isinstance(source, bytes | bytearray):
            image = Image.open(io.BytesIO(bytes(source)))
        else:
            image = Image.open(Path(source))
        if image.format not in SUPPORTED_FORMATS:
            raise UnreadableImage(
                f"{field} ({where}) is a {image.format} file; supported formats are "
                f"{', '.join(SUPPORTED_FORMATS)}.",
                field=field,
                fix=_READ_FIX,
            )
        image.load()
    except FileNotFoundError as exc:
        raise UnreadableImage(f"{field}: no file at {where}.", field=field, fix=_READ_FIX) from exc
    except UnidentifiedImageError as exc:
        raise UnreadableImage(
            f"{field} ({where}) is not an image file that can be read.",
            field=field,
            fix=_READ_FIX,
        ) from exc
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(
            f"{field} ({where}) has too many pixels to be decoded safely.",
            field=field,
            fix="downscale the image (and its masks) before uploading",
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or damaged image data
        raise UnreadableImage(
            f"{field} ({where}) is damaged or truncated ({exc}).", field=field, fix=_READ_FIX
        ) from exc
    return image


def instance_names(names: Sequence[str] | None, n: int) -> list[str]:
    """The names of `n` instances (`asset0`... when none are given), or InputError naming
    the field: one per mask, non-empty, distinct, not starting with '<' (a token's mark)."""
    if names is None or len(names) == 0:
        return [f"asset{i}" for i in range(n)]
    names = [s.strip() for s in names]
    if len(names) != n:
        raise InputError(
            f"{len(names)} names given for {n} masks.",
            field="names",
            fix=f"give exactly {n} names, one per mask, in mask order",
        )
    for i, name in enumerate(names):  # the field names the name at fault: names[i]
        if not name or name in names[:i]:
            raise InputError(
                f"Instance names must be non-empty and distinct; names[{i}] is "
                + ("empty." if not name else f"'{name}' again."),
                field=f"names[{i}]",
                fix="give each instance its own name",
            )
        if name.startswith("<"):
            raise InputError(
                f"Instance names may not start with '<' (names[{i}] is '{name}').",
                field=f"names[{i}]",
                fix="use plain words, e.g. 'red car'",
            )
    return names
