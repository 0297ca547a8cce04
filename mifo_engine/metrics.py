"""The paper's quality metrics (Appendix C.4) as pure functions on embeddings and pixels.

SIM-C: cosine of CLIP's text and image embeddings. SIM-D: cosine of DINO embeddings of a
generated subject's region and of its input instance. NSIM-D: the mean of that cosine
against every other instance. CS = SIM-C x SIM-D x (1 - NSIM-D), the composite of Table 2.
No torch here: the feature models are in `features`, the protocol in `evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]
METRICS = ("sim_c", "sim_d", "nsim_d", "cs")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine of two vectors (0 when either is zero)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norm = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return float(a64 @ b64) / norm if norm > 0 else 0.0


def composite_score(sim_c: float | None, sim_d: float | None, nsim_d: float | None) -> float | None:
    """CS = SIM-C x SIM-D x (1 - NSIM-D); None where a term is (one instance: no NSIM-D)."""
    if sim_c is None or sim_d is None or nsim_d is None:
        return None
    return sim_c * sim_d * (1.0 - nsim_d)


def identity_scores(
    region: np.ndarray, instances: np.ndarray, index: int
) -> tuple[float, float | None]:
    """SIM-D against instance `index` and NSIM-D, the mean against every other instance
    (None with a single instance); `region` (d,) and `instances` (N, d) DINO embeddings."""
    cosines = [cosine(region, row) for row in instances]
    others = [c for j, c in enumerate(cosines) if j != index]
    return cosines[index], (float(np.mean(others)) if others else None)


# --- regions and masking


def box_mask(box: Box, size: tuple[int, int]) -> np.ndarray:
    """A (height, width) bool raster of a box in fractions: rows round(y0*h) to round(y1*h),
    columns round(x0*w) to round(x1*w), half-open; at least the pixel under its centre."""
    width, height = size
    x0, y0, x1, y1 = box
    top, bottom = round(y0 * height), round(y1 * height)
    left, right = round(x0 * width), round(x1 * width)
    raster = np.zeros((height, width), bool)
    raster[top:bottom, left:right] = True
    if not raster.any():
        cy = min(int((y0 + y1) / 2 * height), height - 1)
        cx = min(int((x0 + x1) / 2 * width), width - 1)
        raster[cy, cx] = True
    return raster


def region_mask(box: Box, size: tuple[int, int], refined: np.ndarray | None = None) -> np.ndarray:
    """A subject's region at image size: its refined mask (any resolution, scaled nearest)
    where synthesis produced a non-empty one, else its box."""
    if refined is None or not np.asarray(refined).any():
        return box_mask(box, size)
    layer = Image.fromarray(np.asarray(refined, bool).astype(np.uint8) * 255)
    return np.asarray(layer.resize(size, Image.Resampling.NEAREST)) > 127


def masked_crop(image: Image.Image, mask: np.ndarray, fill: Sequence[int]) -> Image.Image:
    """The region as DINO sees it: cropped to the mask's bounding box, pixels outside the mask
    painted `fill`, and padded with `fill` to a centred square (so no resize distorts it)."""
    rgb = np.asarray(image.convert("RGB"))
    inside = np.asarray(mask, bool)
    if inside.shape != rgb.shape[:2]:
        raise ValueError(f"mask {inside.shape} does not match image {rgb.shape[:2]}")
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        raise ValueError("the region is empty")
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    colour = np.array(fill, np.uint8)
    crop = np.where(inside[top:bottom, left:right, None], rgb[top:bottom, left:right], colour)
    h, w = crop.shape[:2]
    side = max(h, w)
    square = np.empty((side, side, 3), np.uint8)
    square[:] = colour
    oy, ox = (side - h) // 2, (side - w) // 2
    square[oy : oy + h, ox : ox + w] = crop
    return Image.fromarray(square)


# --- scores of one image, and their summaries


@dataclass(frozen=True)
class SubjectScore:
    """One subject of one generated image."""

    token: str
    sim_d: float
    nsim_d: float | None  # None: the concept has one instance
    cs: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"sim_d": self.sim_d, "nsim_d": self.nsim_d, "cs": self.cs}


@dataclass(frozen=True)
class ImageScore:
    """The metrics of one generated image: SIM-C, and SIM-D, NSIM-D and CS per subject."""

    prompt: str
    text: str  # the prompt with each token replaced by its instance name: what CLIP reads
    seed: int
    sim_c: float
    subjects: tuple[SubjectScore, ...]
    file: str | None = None  # the image's file name where it was saved

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "prompt": self.prompt,
            "text": self.text,
            "seed": self.seed,
            "sim_c": self.sim_c,
            "subjects": {s.token: s.to_dict() for s in self.subjects},
        }


@dataclass(frozen=True)
class Spread:
    """Mean and population standard deviation (ddof 0) of the values present."""

    mean: float | None
    std: float | None
    count: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread:
        present = [v for v in values if v is not None and math.isfinite(v)]
        if not present:
            return cls(None, None, 0)
        return cls(float(np.mean(present)), float(np.std(present)), len(present))


@dataclass(frozen=True)
class MetricRow:
    """The metrics of one token over the images it appears in (or of all, `token` "mean").

    `cs` is the composite of the row's means, as the paper's Table 2 gives it; `cs_std` is
    the spread of the composites of each (image, subject) pair."""

    token: str
    name: str
    images: int
    sim_c: Spread
    sim_d: Spread
    nsim_d: Spread
    cs: float | None
    cs_std: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "name": self.name,
            "images": self.images,
            **{k: getattr(self, k).mean for k in ("sim_c", "sim_d", "nsim_d")},
            **{f"{k}_std": getattr(self, k).std for k in ("sim_c", "sim_d", "nsim_d")},
            "cs": self.cs,
            "cs_std": self.cs_std,
        }


def metric_row(
    token: str, name: str, pairs: Sequence[tuple[ImageScore, SubjectScore]]
) -> MetricRow:
    """The row of (image, subject) pairs: each metric's mean and spread over them."""
    sim_c = Spread.of(image.sim_c for image, _ in pairs)
    sim_d = Spread.of(s.sim_d for _, s in pairs)
    nsim_d = Spread.of(s.nsim_d for _, s in pairs)
    cs = composite_score(sim_c.mean, sim_d.mean, nsim_d.mean)
    return MetricRow(
        token, name, len(pairs), sim_c, sim_d, nsim_d, cs, Spread.of(s.cs for _, s in pairs).std
    )


def metric_rows(
    scores: Sequence[ImageScore], names: Mapping[str, str]
) -> tuple[list[MetricRow], MetricRow]:
    """One row per token (in `names`' order) and the row of every (image, subject) pair."""
    pairs = [(image, s) for image in scores for s in image.subjects]
    rows = [
        metric_row(token, name, [(i, s) for i, s in pairs if s.token == token])
        for token, name in names.items()
    ]
    return rows, metric_row("mean", "all instances", pairs)
