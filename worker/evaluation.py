"""The worker's side of evaluations: the feature models it keeps, running the protocol for an
evaluation job, what it stores, and the scores of a synthesis asked for with `evaluate`.

The feature models (CLIP for SIM-C, DINO for SIM-D and NSIM-D) are MIFO_CLIP_MODEL and
MIFO_DINO_MODEL. Each loads on its first use, on the base model's device, and stays loaded
for the process' next jobs (the engine keeps the set asked for last), as the base model does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from core import engine
from core.engine import EvaluationConfig, ModelLoadError
from core.settings import Settings

# The artifact kinds of an evaluation (api.present_evaluation reads them).
IMAGE, CHART, RECORD, REFERENCE = "image", "chart", "evaluation", "reference"
SETTINGS = {"clip_model": "MIFO_CLIP_MODEL", "dino_model": "MIFO_DINO_MODEL"}


def features(settings: Settings, device: Any) -> Any:
    """This process' feature models on `device` (loaded on first use, then kept)."""
    return engine.feature_models(settings.clip_model, settings.dino_model, device=str(device))


def config(params: dict[str, Any], settings: Settings) -> EvaluationConfig:
    """The job's EvaluationConfig: its request's prompts, images, steps and seed, and the
    worker's feature models."""
    return EvaluationConfig.from_mapping(
        {
            "prompts": params["prompts"],
            "images_per_prompt": params["images_per_prompt"],
            "steps": params["steps"],
            "seed": params["seed"],
            "clip_model": settings.clip_model,
            "dino_model": settings.dino_model,
        }
    )


def stored_inputs(concept: Any, storage: Any, prefix: str | None) -> tuple[Any, list[Any]] | None:
    """The image and masks a concept was learned from, from its stored inputs, for a concept
    saved before concepts kept their masks; None when the concept holds them."""
    if prefix is None or (
        concept.input_image is not None and len(concept.input_masks) == len(concept.tokens)
    ):
        return None
    image = storage.get(f"{prefix}inputs/image.png")
    return image, [storage.get(key) for key in storage.keys(f"{prefix}inputs/masks/")]


def run(
    base: Any,
    concept: Any,
    params: dict[str, Any],
    settings: Settings,
    progress: Any,
    inputs: tuple[Any, list[Any]] | None = None,
) -> Any:
    """The evaluation of an `evaluate` job (mifo_engine.evaluation.EvaluationResult)."""
    with named_settings():
        return engine.evaluate(
            base,
            concept,
            config=config(params, settings),
            features=features(settings, base.device),
            progress=progress,
            inputs=inputs,
        )


def score(
    made: Any,
    concept: Any,
    settings: Settings,
    device: Any,
    inputs: tuple[Any, list[Any]] | None = None,
) -> list[dict[str, Any]]:
    """Each image's metrics of a synthesis asked for with `evaluate` (its refined masks as
    the subjects' regions, where refinement made them)."""
    with named_settings():
        scores = engine.score_synthesis(
            made,
            concept,
            features(settings, device),
            regions=made.refined_masks or None,
            inputs=inputs,
        )
    return [{k: s.to_dict()[k] for k in ("sim_c", "text", "subjects")} for s in scores]


def artifacts(result: Any, prefix: str, sizes: dict[str, int]) -> list[dict[str, Any]]:
    """The rows of what `result.save()` wrote under `prefix` (uploaded: `sizes`)."""
    found: list[dict[str, Any]] = []

    def add(kind: str, position: int, name: str, label: str | None = None) -> None:
        key = prefix + name
        if key in sizes:
            content = "application/json" if name.endswith(".json") else "image/png"
            row = dict(kind=kind, position=position, key=key, size=sizes[key])
            found.append(row | {"label": label, "content_type": content})

    add(RECORD, 0, "evaluation.json")
    add(CHART, 0, "chart.png")
    for n, image in enumerate(result.images):
        add(IMAGE, n, f"images/{image.file}")
    for n, (token, name) in enumerate(result.record()["references"].items()):
        add(REFERENCE, n, name, label=token)
    return found


def record(result: Any) -> dict[str, Any]:
    """The job's result: the rows, the mean and each image's scores (as evaluation.json has
    them, each image with its index), the config and the feature models."""
    whole = result.record()
    images = [{"index": n, **image} for n, image in enumerate(whole["images"])]
    keep = ("rows", "mean", "config", "feature_models")
    return {**{k: whole[k] for k in keep}, "images": images}


@contextlib.contextmanager
def named_settings() -> Iterator[None]:
    """A feature model that cannot be loaded fails the job naming its setting
    (MIFO_CLIP_MODEL, MIFO_DINO_MODEL), not the engine's field."""
    try:
        yield
    except ModelLoadError as exc:
        if exc.field not in SETTINGS:
            raise
        variable = SETTINGS[exc.field]
        raise ModelLoadError(
            f"{exc.message} ({variable} on the worker)", field=variable, fix=exc.fix
        ) from exc
