"""Reading and checking POST /v1/segmentations before anything is stored: the image (a new
upload, or a stored one named by `image_id`), the mode, the prompts against the image's size
(mifo_engine.segprompts, without torch) and the options of a proposal request."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.checks.uploads import read_file, sniff
from core import images
from core.engine import MifoError, SegmentConfig, check_prompts, load_image
from core.models import SegmentImage
from core.problems import Problem, from_engine
from core.settings import Settings
from core.submissions import SegmentInputs, unknown_image

MODES = ("prompts", "proposals")
# Every valid prompt list is far below this: MIFO_MAX_INSTANCES instances of 16 points.
MAX_PROMPTS_BYTES = 64 * 1024
# The proposal settings a request may change, each at most this much (a grid of 32 x 32
# points decodes 1024 prompts: four times the default 16 x 16).
PROPOSAL_CAPS: dict[str, float] = {
    "points_per_side": 32,
    "max_proposals": 64,
    "min_predicted_iou": 1.0,
    "min_stability": 1.0,
    "stability_offset": 10.0,
    "dedupe_iou": 1.0,
    "min_area_share": 1.0,
}
PROMPTS_FIX = (
    'give a JSON list with one object per instance: {"points": [[x, y], ...], "labels": '
    '[1 or 0, ...]} and/or {"box": [x0, y0, x1, y1]}, in the image\'s pixels; or send '
    "mode=proposals (and no prompts) to find instances"
)


def limits(settings: Settings) -> SegmentConfig:
    """The engine's prompt limits on this server: MIFO_MAX_INSTANCES instances."""
    return SegmentConfig(max_instances=settings.max_instances)


def choose_image(image: UploadFile | None, image_id: uuid.UUID | None) -> None:
    """Exactly one of a new `image` and a stored `image_id`."""
    if image is not None and image_id is not None:
        raise Problem(
            "validation_error",
            "Both image and image_id were sent.",
            field="image_id",
            fix="send the image once, then only its image_id with the next clicks",
        )
    if image is None and image_id is None:
        raise Problem(
            "validation_error",
            "No image: neither image nor image_id was sent.",
            field="image",
            fix="send the image file as `image`, or the image_id an earlier segmentation of it "
            "answered",
        )


def new_image(upload: UploadFile, settings: Settings) -> tuple[bytes, int, int]:
    """The upload as the PNG to store (upright) and its width and height: the pixels the
    prompts' coordinates are in."""
    data = read_file(upload, "image", settings.max_upload_bytes)
    sniff(data, "image", settings)  # format, pixel count, mode: before decoding
    try:
        png = images.as_png(data, None)
        width, height = load_image(png, field="image").size
    except MifoError as exc:
        raise from_engine(exc) from exc
    return png, width, height


def stored_image(
    session: Session, image_id: uuid.UUID, tenant: uuid.UUID, settings: Settings
) -> SegmentImage:
    """The tenant's stored image; 404 naming `image_id` otherwise."""
    found = session.scalar(
        select(SegmentImage).where(SegmentImage.id == image_id, SegmentImage.tenant_id == tenant)
    )
    if found is None:
        raise unknown_image(image_id, settings)
    return found


def parse_json(raw: str | None, field: str, limit: int, what: str) -> Any:
    """The JSON of a form field (None when absent or blank); 422 naming it otherwise."""
    if raw is None or not raw.strip():
        return None
    if len(raw.encode()) > limit:
        raise Problem(
            "limit_exceeded",
            f"{field} is {len(raw.encode())} bytes of JSON; at most {limit} are accepted.",
            field=field,
            fix=f"send at most {limit} bytes",
        )
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError as exc:
        raise Problem("invalid_json", f"{field} nests too deep.", field=field, fix=what) from exc
    except ValueError as exc:
        raise Problem("invalid_json", f"{field}: {exc}.", field=field, fix=what) from exc


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def checked_prompts(
    raw: str | None, size: tuple[int, int], settings: Settings
) -> list[dict[str, Any]]:
    """The prompts, one per instance, checked against an image of `size` and this server's
    limits, as the worker takes them (labels filled in)."""
    prompts = parse_json(raw, "prompts", MAX_PROMPTS_BYTES, PROMPTS_FIX)
    if prompts is None or prompts == []:
        raise Problem("invalid_prompts", "No prompts were given.", field="prompts", fix=PROMPTS_FIX)
    try:
        checked = check_prompts(prompts, size, limits(settings))
    except MifoError as exc:
        raise _prompt_problem(exc, settings) from exc
    return [
        {"points": [list(p) for p in c.points], "labels": list(c.labels)}
        | ({"box": list(c.box)} if c.box is not None else {})
        for c in checked
    ]


def _prompt_problem(exc: MifoError, settings: Settings) -> Problem:
    problem = from_engine(exc)
    if problem.code == "too_many_instances":
        problem.fix = (
            f"ask for at most {settings.max_instances} instances per request "
            "(MIFO_MAX_INSTANCES on the server)"
        )
        return problem
    return Problem("invalid_prompts", exc.message, field=problem.field, fix=problem.fix)


def proposal_options(raw: str | None) -> dict[str, Any]:
    """The proposal settings a request changes (PROPOSAL_CAPS names them), checked."""
    fix = 'send a JSON object of proposal settings, e.g. {"points_per_side": 8}'
    options = parse_json(raw, "options", MAX_PROMPTS_BYTES, fix)
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise Problem("invalid_config", "options must be a JSON object.", field="options", fix=fix)
    for name, value in options.items():
        if name not in PROPOSAL_CAPS:
            raise Problem(
                "invalid_config",
                f"options.{name} is not a proposal setting a request may change.",
                field=f"options.{name}",
                fix=f"use only {', '.join(PROPOSAL_CAPS)}",
            )
        cap = PROPOSAL_CAPS[name]
        if isinstance(value, int | float) and not isinstance(value, bool) and value > cap:
            raise Problem(
                "limit_exceeded",
                f"options.{name} is {value}; this server allows at most {cap:g}.",
                field=f"options.{name}",
                fix=f"give at most {cap:g}",
            )
    try:
        SegmentConfig.from_mapping(options)
    except MifoError as exc:
        raise from_engine(exc, prefix="options.") from exc
    return options


def mode_params(
    mode: str,
    prompts: str | None,
    options: str | None,
    size: tuple[int, int],
    settings: Settings,
) -> dict[str, Any]:
    """What the worker runs with, for `mode` (prompts: the checked prompts; proposals: the
    options), and the image's size."""
    width, height = size
    if mode == "proposals":
        if prompts is not None and prompts.strip():
            raise Problem(
                "invalid_prompts",
                "mode=proposals finds the instances itself: it takes no prompts.",
                field="prompts",
                fix="leave prompts out to find instances, or send mode=prompts with them",
            )
        found = proposal_options(options)
        return {"mode": mode, "options": found, "width": width, "height": height}
    if options is not None and options.strip():
        raise Problem(
            "invalid_config",
            "options set how instances are found: they apply to mode=proposals only.",
            field="options",
            fix="leave options out with prompts, or send mode=proposals",
        )
    checked = checked_prompts(prompts, size, settings)
    return {"mode": mode, "prompts": checked, "width": width, "height": height}


def segment_inputs(
    session: Session,
    tenant: uuid.UUID,
    settings: Settings,
    image: UploadFile | None,
    form: tuple[uuid.UUID | None, str | None, str | None, str | None],
) -> SegmentInputs:
    """The request checked whole, as the submission takes it; nothing is stored before."""
    image_id, mode, prompts, options = form
    choose_image(image, image_id)
    if image is not None:
        png: bytes | None
        png, width, height = new_image(image, settings)
    else:
        assert image_id is not None
        stored = stored_image(session, image_id, tenant, settings)
        png, width, height = None, stored.width, stored.height
    params = mode_params(mode or "prompts", prompts, options, (width, height), settings)
    return SegmentInputs(image=png, image_id=image_id, width=width, height=height, params=params)
