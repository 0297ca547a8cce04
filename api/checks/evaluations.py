"""The checks of an evaluation request beyond its schema: the server's limits, the engine's
own refusals of its settings, and its prompts against the concept's tokens (each synthesis
the protocol would run is checked as a synthesis request is, before anything is queued)."""

from __future__ import annotations

from typing import Any

from api.schemas import EvaluationCreate
from core.engine import (
    PAPER_PROMPTS,
    EvaluationConfig,
    MifoError,
    plan_runs,
    validate_synthesis_request,
)
from core.models import Concept
from core.problems import Problem, from_engine
from core.settings import Settings

__all__ = ["config", "limits", "params"]


def limits(body: EvaluationCreate, settings: Settings) -> None:
    """422 limit_exceeded naming the field: too many prompts, a prompt too long, too many
    images per synthesis or steps."""
    prompts = body.prompts or []
    checks = [
        (
            "prompts",
            len(prompts),
            settings.max_evaluation_prompts,
            "MIFO_MAX_EVALUATION_PROMPTS",
            " prompts",
        ),
        (
            "images_per_prompt",
            body.images_per_prompt,
            settings.max_images_per_synthesis,
            "MIFO_MAX_IMAGES_PER_SYNTHESIS",
            "",
        ),
        ("steps", body.steps, settings.max_synthesis_steps, "MIFO_MAX_SYNTHESIS_STEPS", ""),
    ]
    longest = max(prompts, key=len, default="")
    if len(longest) > settings.max_prompt_chars:
        field = f"prompts[{prompts.index(longest)}]"
        checks.insert(
            0,
            (
                field,
                len(longest),
                settings.max_prompt_chars,
                "MIFO_MAX_PROMPT_CHARS",
                " characters",
            ),
        )
    for field, value, limit, env, what in checks:
        if value > limit:
            raise Problem(
                "limit_exceeded",
                f"{field} is {value}{what}; this server allows at most {limit}.",
                field=field,
                fix=f"ask for at most {limit} ({env} on the server)",
            )


def config(body: EvaluationCreate) -> EvaluationConfig:
    """The engine's EvaluationConfig of the body (its defaults where the body has none); the
    engine's refusal (a prompt with two {token} slots, a seed too large for the images) as
    422 naming the field."""
    values: dict[str, Any] = {
        "prompts": list(body.prompts) if body.prompts is not None else list(PAPER_PROMPTS),
        "images_per_prompt": body.images_per_prompt,
        "steps": body.steps,
        "seed": body.seed,
    }
    try:
        return EvaluationConfig.from_mapping(values)
    except MifoError as exc:
        raise from_engine(exc) from exc


def params(
    config: EvaluationConfig, concept: Concept, tokenizer: Any, settings: Settings
) -> dict[str, Any]:
    """What the worker needs: the prompts, images per prompt, steps and seed, once every
    synthesis they ask for is known to be possible with this concept; the number of
    syntheses and images, for the job's request."""
    meta = concept.meta or {}
    tokens = [(t["token"], t["name"]) for t in meta.get("tokens", [])]
    try:
        runs = plan_runs(tokens, config)  # 422 naming prompts: one without the tokens
        for run in runs:
            try:
                validate_synthesis_request(meta, run.prompt, run.boxes, tokenizer=tokenizer)
            except MifoError as exc:  # too long for the text encoder, a token it lacks
                raise Problem(
                    "invalid_config",
                    f"Prompt {run.prompt!r} cannot be synthesised: {exc.message}",
                    field="prompts",
                    fix=exc.fix,
                ) from exc
    except MifoError as exc:
        raise from_engine(exc) from exc
    images = len(runs) * config.images_per_prompt
    if images > settings.max_evaluation_images:
        raise Problem(
            "limit_exceeded",
            f"These prompts make {len(runs)} syntheses of this concept's "
            f"{len(tokens)} instances (a {{token}} template runs once per instance) x "
            f"{config.images_per_prompt} images_per_prompt = {images} images; this server "
            f"allows at most {settings.max_evaluation_images}.",
            field="images_per_prompt" if config.images_per_prompt > 1 else "prompts",
            fix="ask for fewer prompts or images_per_prompt (MIFO_MAX_EVALUATION_IMAGES on "
            "the server)",
        )
    return {
        "prompts": list(config.prompts),
        "images_per_prompt": config.images_per_prompt,
        "steps": config.steps,
        "seed": config.seed,
        "syntheses": len(runs),
        "images": images,
    }
