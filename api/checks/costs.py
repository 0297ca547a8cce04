"""Caps on the config fields that decide how much memory or GPU time a job takes.

The settings cap steps, images and instances; these fields scale the work too (a learning
`resolution` is also resized in the API process while checking uploads), so a request
outside them is refused with a problem naming the field, before anything is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.problems import Problem

# field -> (largest value, what is measured); lengths for tuple fields
LEARN_CAPS: Mapping[str, tuple[int, str]] = {
    "resolution": (1024, "pixels"),
    "num_class_images": (64, "images"),
    "class_image_steps": (100, "steps"),
    "lora_rank": (256, ""),
    "diagnostic_timesteps": (10, "timesteps"),
    "attn_loss_resolutions": (4, "resolutions"),
    "phase2_attn_resolutions": (4, "resolutions"),
    "max_instances": (32, "instances"),
}
SYNTHESIS_CAPS: Mapping[str, tuple[int, str]] = {
    "max_guidance_iters": (10, "iterations"),
    "kmeans_iters": (100, "iterations"),
    "kmeans_inits": (100, "starts"),  # the first refinement's k-means starts
    "num_clusters": (10, "clusters"),
    "loss_layers": (6, "layers"),
    "filler_words": (200, "words"),
}


def check_costs(config: Any, caps: Mapping[str, tuple[int, str]], prefix: str = "options.") -> None:
    """Refuse a config whose cost-driving fields exceed their caps."""
    for name, (limit, unit) in caps.items():
        value = getattr(config, name)
        if value is None:
            continue
        size = len(value) if isinstance(value, tuple) else value
        if size > limit:
            what = f"{size} {unit}".strip()
            raise Problem(
                "limit_exceeded",
                f"{prefix}{name} is {what}; this server allows at most {limit}.",
                field=f"{prefix}{name}",
                fix=f"ask for at most {limit}",
            )


def check_step_counts(config: Any, limit: int, names: tuple[str, ...], env: str) -> None:
    """Step-like fields share the server's step limit."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value > limit:
            raise Problem(
                "too_many_steps",
                f"options.{name} is {value}; the limit is {limit}.",
                field=f"options.{name}",
                fix=f"ask for at most {limit} ({env} on the server)",
            )
