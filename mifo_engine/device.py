"""Device choice: a --device value turned into an available torch device."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ModelLoadError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """Turn a --device value (auto, cpu, cuda, cuda:N, mps) into an available torch device."""
    import torch

    text = name.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"Unknown device '{name}'.", field="device", fix="pass --device auto, cpu or cuda[:N]"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"Device '{name}' was requested but no CUDA GPU is available to this process.",
                field="device",
                fix="pass --device cpu (or auto), or run on a machine with a CUDA GPU and a "
                "CUDA build of torch",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"Device '{name}' does not exist: {torch.cuda.device_count()} CUDA GPU(s) visible.",
                field="device",
                fix=f"pass --device cuda:0 ... cuda:{torch.cuda.device_count() - 1}",
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelLoadError(
                f"Device '{name}' was requested but MPS is not available.",
                field="device",
                fix="pass --device cpu or auto",
            )
    elif device.type != "cpu":
        raise ModelLoadError(
            f"Device type '{device.type}' is not supported.",
            field="device",
            fix="pass --device auto, cpu, cuda[:N] or mps",
        )
    return device


def use_cpu_threads(device: torch.device, threads: int) -> int:
    """Run the coming CPU work on `threads` torch threads (no effect on a GPU device, whose
    host threads only feed it); returns the number in use afterwards."""
    import torch

    if device.type == "cpu" and threads >= 1 and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()
