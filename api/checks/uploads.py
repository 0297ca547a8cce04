"""Reading and checking the multipart upload of POST /v1/concepts before anything is stored."""

from __future__ import annotations

import functools
import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError

from api.checks.costs import LEARN_CAPS, check_costs, check_step_counts
from api.checks.inputs import (
    MAX_OPTIONS_BYTES,
    TEXT_FIX,
    forbidden_character,
    options_problem,
    too_deep,
)
from core.engine import LearnConfig, MifoError, check_inputs, instance_names
from core.problems import Problem, from_engine
from core.settings import Settings
from core.submissions import LearnInputs


@dataclass
class Upload:
    image: bytes
    masks: list[bytes]
    names: list[str] | None
    options: dict[str, Any]
    config: LearnConfig
    width: int
    height: int


def read_file(upload: UploadFile, field: str, limit: int) -> bytes:
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise Problem(
            "file_too_large",
            f"{field} is larger than {limit} bytes.",
            field=field,
            fix=f"send at most {limit} bytes (MIFO_MAX_UPLOAD_BYTES on the server)",
        )
    if not data:
        raise Problem(
            "empty_file",
            f"{field} is empty.",
            field=field,
            fix="attach the file's content",
        )
    return data


def parse_options(raw: str | None) -> tuple[dict[str, Any], LearnConfig]:
    if raw is None or not raw.strip():
        return {}, LearnConfig()
    size = len(raw.encode())
    if size > MAX_OPTIONS_BYTES and (found := options_problem(None, size)):
        raise _options_error(*found)  # before parsing: a size check costs nothing
    try:
        options = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError as exc:  # deeper than Python's parser goes, so deeper than allowed
        raise _options_error(*too_deep()) from exc
    except ValueError as exc:
        raise Problem(
            "invalid_json",
            f"options: {exc}.",
            field="options",
            fix='send a JSON object of LearnConfig fields, e.g. {"phase1_steps": 400}, with '
            "finite numbers only (no NaN or Infinity)",
        ) from exc
    if not isinstance(options, dict):
        raise Problem(
            "invalid_config",
            "options must be a JSON object.",
            field="options",
            fix='wrap the fields in {...}, e.g. {"seed": 3}',
        )
    if found := options_problem(options, size):
        raise _options_error(*found)
    try:
        return options, LearnConfig.from_mapping(options)
    except MifoError as exc:
        raise from_engine(exc, prefix="options.") from exc


def _options_error(detail: str, fix: str) -> Problem:
    return Problem("options_too_large", detail, field="options", fix=fix)


def _no_constant(name: str) -> float:
    """JSON has no NaN or Infinity; Python's parser accepts them unless told otherwise."""
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999
        raise ValueError(f"{text} is out of range")
    return value


def parse_names(raw: str | None, count: int, settings: Settings) -> list[str] | None:
    if raw is None or not raw.strip():
        return None
    if len(raw) > settings.max_names_chars:  # before splitting: the whole field
        raise _name_limit("names", len(raw), settings.max_names_chars, "MIFO_MAX_NAMES_CHARS")
    names = [n.strip() for n in raw.split(",")]
    if len(names) != count:
        raise Problem(
            "invalid_names",
            f"Got {len(names)} name(s) for {count} mask(s).",
            field="names",
            fix=f"give {count} non-empty comma-separated names, one per mask in order",
        )
    for i, (name, sent) in enumerate(zip(names, raw.split(","), strict=True)):
        if len(name) > settings.max_name_chars:
            raise _name_limit(
                f"names[{i}]", len(name), settings.max_name_chars, "MIFO_MAX_NAME_CHARS"
            )
        found = forbidden_character(sent)  # as sent: spaces around a name are trimmed
        if found:
            raise Problem(
                "forbidden_character",
                f"names[{i}] {found}.",
                field=f"names[{i}]",
                fix=TEXT_FIX,
            )
    try:  # the engine's rules (non-empty, distinct, no leading '<'): refused now, not by the job
        return instance_names(names, count)
    except MifoError as exc:
        raise from_engine(exc) from exc


def _name_limit(field: str, length: int, limit: int, env: str) -> Problem:
    return Problem(
        "limit_exceeded",
        f"{field} is {length} characters; this server allows at most {limit}.",
        field=field,
        fix=f"shorten it to at most {limit} characters ({env} on the server)",
    )


def sniff(data: bytes, field: str, settings: Settings, *, reads_as: str = "RGB") -> tuple[int, int]:
    """Format and size from the file's header only: nothing is decoded yet.

    The format comes from the content, never from the file name or the declared type; the
    pixel count is checked before any decoding, so a decompression bomb costs nothing. The
    colour mode must have a reading as `reads_as` (RGB for the image, L for a mask)."""
    formats = [f.upper() for f in settings.image_formats]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(io.BytesIO(data), formats=formats) as img:
                width, height = img.size
                mode = img.mode
    except Image.DecompressionBombError as exc:  # over twice the limit: Pillow stops reading
        raise _too_many_pixels(field, settings, _bomb_size(exc)) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise Problem(
            "unsupported_format",
            f"{field} is not a readable {' / '.join(formats)} image (judged by its content).",
            field=field,
            fix=f"send a {' or '.join(formats)} file (MIFO_IMAGE_FORMATS)",
        ) from exc
    if width * height > settings.max_image_pixels:
        raise _too_many_pixels(field, settings, f"{width}x{height} pixels")
    if not _converts(mode, reads_as):
        what = "greyscale" if reads_as == "L" else "RGB"
        raise Problem(
            "unsupported_mode",
            f"{field} is a {mode} image, which has no {what} reading.",
            field=field,
            fix="export it as RGB or greyscale"
            + (" (the instance white on black)" if reads_as == "L" else ""),
        )
    return width, height


@functools.cache
def _converts(mode: str, target: str) -> bool:
    """Whether PIL converts images of `mode` to `target` (LAB has no greyscale, say)."""
    try:
        Image.new(mode, (1, 1)).convert(target)
    except ValueError:
        return False
    return True


def _bomb_size(exc: Exception) -> str:
    """The pixel count Pillow's refusal names (its own limit is left out: ours is the one)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{int(found.group(1))} pixels" if found else "far more pixels than that"


def _too_many_pixels(field: str, settings: Settings, what: str) -> Problem:
    return Problem(
        "image_too_large",
        f"{field} is {what}; the limit is {settings.max_image_pixels} pixels.",
        field=field,
        fix=f"downscale it to at most {settings.max_image_pixels} pixels "
        "(MIFO_MAX_IMAGE_PIXELS on the server)",
    )


def check_limits(masks: list[UploadFile], config: LearnConfig, settings: Settings) -> None:
    if len(masks) > settings.max_instances:
        raise Problem(
            "too_many_instances",
            f"Got {len(masks)} masks; this server learns at most {settings.max_instances}.",
            field="masks",
            fix=f"send at most {settings.max_instances} masks (MIFO_MAX_INSTANCES)",
        )
    steps = ("phase1_steps", "phase2_steps", "reward_steps")
    check_step_counts(config, settings.max_learn_steps, steps, "MIFO_MAX_LEARN_STEPS")
    check_costs(config, LEARN_CAPS)


def check_with_engine(upload: Upload, resolution: int) -> None:
    """Run the engine's own input preparation at the size the base model learns at
    (`resolution`, unless the options set one), so a job never fails on its inputs later."""
    config = upload.config
    resolution = config.resolution or resolution
    try:
        check_inputs(upload.image, upload.masks, resolution=resolution, config=config)
    except MifoError as exc:
        raise from_engine(exc) from exc


def read_upload(
    image: UploadFile,
    masks: list[UploadFile],
    names: str | None,
    options: str | None,
    settings: Settings,
    resolution: int,
) -> Upload:
    opts, config = parse_options(options)
    check_limits(masks, config, settings)
    parsed_names = parse_names(names, len(masks), settings)  # before any file is read
    limit = settings.max_upload_bytes
    image_data = read_file(image, "image", limit)
    mask_data = [read_file(m, f"masks[{i}]", limit) for i, m in enumerate(masks)]
    width, height = sniff(image_data, "image", settings)
    for i, data in enumerate(mask_data):
        sniff(data, f"masks[{i}]", settings, reads_as="L")
    upload = Upload(
        image=image_data,
        masks=mask_data,
        names=parsed_names,
        options=opts,
        config=config,
        width=width,
        height=height,
    )
    check_with_engine(upload, resolution)
    return upload


def learn_inputs(upload: Upload) -> LearnInputs:
    """What the submission service stores: the checked upload, without the parsed config."""
    return LearnInputs(
        image=upload.image,
        masks=upload.masks,
        names=upload.names,
        options=upload.options,
        mask_threshold=upload.config.mask_threshold,
        width=upload.width,
        height=upload.height,
    )
