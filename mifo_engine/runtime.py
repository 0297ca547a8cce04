"""Execution helpers shared by learning and synthesis: precision, progress, versions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch

from .errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """One progress report: `phase` ("prior", "phase1", "phase2", "diagnostics", "synthesis")."""

    phase: str
    step: int  # steps done in this phase
    total: int  # steps of this phase
    losses: Mapping[str, float] = field(default_factory=dict)


ProgressFn = Callable[[Progress], bool | None]


def report(progress: ProgressFn | None, update: Progress) -> None:
    """Send a report; a callback answering False stops the run."""
    if progress is not None and progress(update) is False:
        raise Cancelled(
            f"Stopped by the caller during {update.phase} at step {update.step}/{update.total}.",
            field="progress",
            fix="run again to completion",
        )


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for full fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass (weights stay fp32)."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(device: torch.device, tf32: bool) -> None:
    """TF32 matmuls on CUDA: fp32 range, faster tensor-core maths."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers of a run."""
    out = {}
    for name in ("mifo", "torch", "diffusers", "transformers", "peft"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out
