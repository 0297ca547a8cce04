"""Shared pieces of the benchmarks: inputs, timing statistics, machine facts, tables, JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"


def scene(size: int = 96, n: int = 2, seed: int = 0) -> tuple[Image.Image, list[Image.Image]]:
    """A seeded textured RGB square with `n` elliptic blobs side by side, and their L masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    pixels = np.stack(
        [90 + 40 * np.sin(xx / 7), 110 + 30 * np.cos(yy / 5), 70 + 60 * xx / size], -1
    )
    pixels = pixels + rng.normal(0.0, 12.0, pixels.shape)
    masks = []
    for i in range(n):
        cx, cy, r = (i + 0.5) * size / n, size / 2, 0.3 * size / n
        inside = ((xx - cx) / r) ** 2 + ((yy - cy) / (0.85 * r)) ** 2 <= 1.0
        pixels = np.where(inside[..., None], [200.0 - 12 * i, 60.0 + 15 * i, 50.0], pixels)
        masks.append(Image.fromarray((inside * 255).astype(np.uint8)))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), masks


def set_threads(threads: int) -> int:
    """Pin torch's intra-op threads (0 keeps torch's default); returns the count in use.

    One thread is the default on shared CPU machines: with every core busy elsewhere, a
    multi-threaded op waits for its slowest (descheduled) thread and timings scatter by 10x.
    """
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


class Stamps:
    """Wall and CPU timestamps of progress reports, keyed by phase, for per-step durations.

    CPU time (`time.process_time`) is the steadier figure on a shared machine: it does not
    count the time the process waits for a core. It only means something on CPU runs.
    """

    def __init__(self, on_report: Any = None) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.terms: dict[str, list[tuple[str, ...]]] = {}
        self.on_report = on_report

    def __call__(self, p: Any) -> None:
        if self.on_report is not None:
            self.on_report(p)
        self.wall.setdefault(p.phase, []).append(time.perf_counter())
        self.cpu.setdefault(p.phase, []).append(time.process_time())
        # the loss names only: reading a value may wait for the device
        self.terms.setdefault(p.phase, []).append(tuple(p.losses))

    def steps(self, phase: str, clock: str = "wall") -> list[float]:
        """Duration of each step of `phase`: report k+1 minus report k (report 0 precedes step 1)."""
        t = (self.wall if clock == "wall" else self.cpu).get(phase, [])
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    def step_terms(self, phase: str) -> list[tuple[str, ...]]:
        """The names of the losses reported after each step (aligned with `steps`)."""
        return self.terms.get(phase, [])[1:]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and count of a sample of durations (seconds)."""
    if not values:
        return {"n": 0, "median": math.nan, "p25": math.nan, "p75": math.nan}
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"n": len(values), "median": statistics.median(values), "p25": q[0], "p75": q[2]}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    for name in ("diffusers", "transformers", "peft"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; floats get 4 significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return "-" if v is None else str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def write_json(name: str, data: dict[str, Any], path: str | Path | None = None) -> Path:
    """Write `data` to bench/results/NAME.json (or `path`); NaN becomes null."""
    target = Path(path) if path is not None else RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(_nan_to_none(data), indent=2) + "\n")
    return target


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value
