"""The checks of a synthesis request beyond its schema: the server's limits, the engine's
options (refused by name, with the field placed in the body) and the prompt and boxes against
the concept's tokens."""

from __future__ import annotations

from typing import Any

from api.checks.costs import SYNTHESIS_CAPS, check_costs
from api.checks.model import fits_model
from api.schemas import SynthesisCreate
from core.engine import MifoError, SynthesisConfig, validate_synthesis_request
from core.models import Concept
from core.problems import Problem, from_engine
from core.settings import Settings

__all__ = ["FIELDS", "config", "fits_model", "limits", "params"]

# The engine options a synthesis body sets at its top level (the rest go in `options`).
FIELDS = ("num_images", "seed", "steps", "guidance_scale", "box_control")


def params(
    body: SynthesisCreate, config: SynthesisConfig, concept: Concept, tokenizer: Any
) -> dict[str, Any]:
    """What the worker needs: the prompt and boxes as the engine checked them against the
    concept, the options the client set (engine defaults fill the rest) and the seeds."""
    try:
        layout = validate_synthesis_request(
            concept.meta or {}, body.prompt, body.boxes, tokenizer=tokenizer
        )
    except MifoError as exc:
        raise from_engine(exc) from exc
    return {
        "prompt": layout.prompt,
        "boxes": {s.token: list(s.box) for s in layout.subjects},
        "config": _values(body),
        "seeds": config.image_seeds(),
        "evaluate": body.evaluate,  # each image scored with the evaluation's metrics
    }


def limits(body: SynthesisCreate, settings: Settings) -> None:
    for field, value, limit, env in (
        ("prompt", len(body.prompt), settings.max_prompt_chars, "MIFO_MAX_PROMPT_CHARS"),
        (
            "num_images",
            body.num_images,
            settings.max_images_per_synthesis,
            "MIFO_MAX_IMAGES_PER_SYNTHESIS",
        ),
        ("steps", body.steps, settings.max_synthesis_steps, "MIFO_MAX_SYNTHESIS_STEPS"),
    ):
        if value > limit:
            what = " characters" if field == "prompt" else ""
            raise Problem(
                "limit_exceeded",
                f"{field} is {value}{what}; this server allows at most {limit}.",
                field=field,
                fix=f"ask for at most {limit} ({env} on the server)",
            )


def config(body: SynthesisCreate) -> SynthesisConfig:
    clash = sorted(set(body.options) & set(FIELDS))
    if clash:
        raise Problem(
            "invalid_config",
            f"options repeats {clash[0]}.",
            field=f"options.{clash[0]}",
            fix=f"set {clash[0]} at the top level of the body",
        )
    try:
        config = SynthesisConfig.from_mapping(_values(body))
    except MifoError as exc:
        prefix = "" if exc.field in FIELDS else "options."
        raise from_engine(exc, prefix=prefix) from exc
    check_costs(config, SYNTHESIS_CAPS)
    return config


def _values(body: SynthesisCreate) -> dict[str, object]:
    return {**body.options, **{f: getattr(body, f) for f in FIELDS}}
