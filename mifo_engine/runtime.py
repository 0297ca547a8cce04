"""Execution helpers shared by learning and synthesis: precision, progress, versions."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .errors import Canceled, ConfigError


@dataclass(frozen=True)
class Progress:
    """One progress report: `phase` ("prior", "phase1", "phase2", "diagnostics", "synthesis")."""

    phase: str
    step: int  # steps done in this phase
    total: int  # steps of this phase
    losses: Mapping[str, float] = field(default_factory=dict)


class LazyLosses(Mapping[str, float]):
    """Loss values read from the device only when a callback looks at them.

    Reading a GPU tensor waits for the device; a callback that only counts steps, or logs
    once a second, then costs no synchronisation on the other steps.
    """

    def __init__(self, tensors: Mapping[str, Any]):
        self._tensors = dict(tensors)
        self._values: dict[str, float] = {}

    def __getitem__(self, key: str) -> float:
        if key not in self._values:
            self._values[key] = float(self._tensors[key].detach())
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


ProgressFn = Callable[[Progress], bool | None]


def report(progress: ProgressFn | None, update: Progress) -> None:
    """Send a report; a callback answering False stops the run."""
    if progress is not None and progress(update) is False:
        raise Canceled(
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


def check_new_directory(directory: str | Path, *, field: str = "out") -> None:
    """Refuse an output directory that exists and is not empty (results never overwrite)."""
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(
            f"{field} {target} already exists and is not empty.",
            field=field,
            fix="choose a new directory",
        )


@contextlib.contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes `directory` only if the block succeeds.

    A reader sees either nothing or the whole result; a failure leaves nothing behind.
    """
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(
            f"{target} already exists and is not empty.", field="out", fix="choose a new directory"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def use_gradient_checkpointing(device: torch.device, setting: str) -> bool:
    """auto: recompute activations on CUDA to save memory; on CPU speed matters more."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def make_optimizer(
    groups: list[dict[str, Any]],
    device: torch.device,
    kind: str,
    *,
    betas: tuple[float, float],
    weight_decay: float,
) -> torch.optim.Optimizer:
    """AdamW: fused on CUDA when `auto`, 8-bit through bitsandbytes when asked for."""
    if kind == "adamw_8bit":
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ConfigError(
                "optimizer 'adamw_8bit' needs the bitsandbytes package.",
                field="optimizer",
                fix="pip install bitsandbytes, or use 'auto'",
            ) from exc
        return bnb.optim.AdamW8bit(groups, betas=betas, weight_decay=weight_decay)
    fused = kind == "adamw_fused" or (kind == "auto" and device.type == "cuda")
    if fused and device.type != "cuda":
        raise ConfigError(
            "optimizer 'adamw_fused' needs a CUDA device.",
            field="optimizer",
            fix="use 'auto' or 'adamw' on CPU",
        )
    return torch.optim.AdamW(groups, betas=betas, weight_decay=weight_decay, fused=fused or None)


@contextlib.contextmanager
def backend_settings(device: torch.device, tf32: bool) -> Iterator[None]:
    """TF32 matmuls on CUDA (fp32 range, tensor-core speed) for one run; restored after."""
    if device.type != "cuda":
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    out = []
    for name in ("mifo", "torch", "diffusers", "transformers", "peft"):
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "unknown"))
    return tuple(out)


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers of a run."""
    return dict(_versions())
