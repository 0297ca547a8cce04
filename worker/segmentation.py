"""Segmentation jobs in a worker: one mask per instance from clicks (mode `prompts`), or
candidate instances found without any (mode `proposals`), on the stored image, with SAM
(MIFO_SEGMENT_MODEL); the masks, an overlay preview and the record of each.

Each worker process keeps one Segmenter beside its base model (worker.tasks keeps that one):
made on the process's first segmentation, which loads SAM, and kept with its embedding cache
for as long as the process lives, so every click after the first on an image runs SAM's prompt
encoder and mask decoder only (`embedding_reused` in the result says so). A segmentation needs
no base model: the runner loads none for it (worker.runner.OWN_MODEL).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image, ImageDraw

from core import engine
from core.engine import Canceled, SegmentConfig
from core.models import segment_image_prefix
from core.settings import Settings
from worker.context import WorkerContext
from worker.threads import cpu_threads

TINT = 0.5  # a mask's colour over the image in the overlay
MARK = 4  # radius of a clicked point in the overlay, in pixels of an image 512 px across

_segmenters: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def segmenter(settings: Settings) -> Any:
    """This process's Segmenter for MIFO_SEGMENT_MODEL on MIFO_DEVICE, made on first use (SAM
    loads at its first request); settings naming another model replace it."""
    key = (settings.segment_model, settings.device)
    with _lock:
        found = _segmenters.get(key)
        if found is None:
            _segmenters.clear()
            found = engine.segmenter(
                settings.segment_model, device=settings.device, config=limits(settings)
            )
            _segmenters[key] = found
        return found


def limits(settings: Settings, options: dict[str, Any] | None = None) -> SegmentConfig:
    """The engine's limits as this server sets them (instances: MIFO_MAX_INSTANCES), with a
    proposal request's `options` (checked by the API already)."""
    return SegmentConfig.from_mapping({"max_instances": settings.max_instances, **(options or {})})


@dataclass
class Made:
    """What one segmentation made: the masks (prompts: one per instance, in order; proposals:
    the candidates, best first), what each is, and the overlay."""

    mode: str  # prompts | proposals
    image_id: uuid.UUID
    size: tuple[int, int]  # (width, height) of the image and of every mask
    masks: list[np.ndarray]  # (H, W) bool
    entries: list[dict[str, Any]]  # per mask: index, score, area, box (proposals: stability, point)
    overlay: Image.Image
    embedding_reused: bool
    seconds: dict[str, float]

    @property
    def stem(self) -> str:
        return "mask" if self.mode == "prompts" else "candidate"

    def names(self) -> list[str]:
        return [f"{self.stem}_{i:02d}.png" for i in range(len(self.masks))]

    def save(self, folder: Path) -> None:
        """`mask_00.png`, ... (proposals: `candidate_00.png`, ...): mode L, 255 on the
        instance, the image's size, as `mifo learn` and POST /v1/concepts take them; and
        `overlay.png`."""
        for name, mask in zip(self.names(), self.masks, strict=True):
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(folder / name)
        self.overlay.save(folder / "overlay.png")

    def artifacts(self, files: str, sizes: dict[str, int]) -> list[dict[str, Any]]:
        """The artifact rows of the uploaded files (under `files`): the masks, the overlay."""
        rows = [
            dict(kind="mask", position=i, label=name, key=files + name, image_id=self.image_id)
            for i, name in enumerate(self.names())
        ]
        rows.append(
            dict(
                kind="preview",
                position=0,
                label="overlay.png",
                key=files + "overlay.png",
                image_id=self.image_id,
            )
        )
        return [row | {"size": sizes[str(row["key"])]} for row in rows]

    def record(self) -> dict[str, Any]:
        """The job's result as stored (api/present_segmentation.py shows it)."""
        width, height = self.size
        entries = "masks" if self.mode == "prompts" else "candidates"
        return {
            "mode": self.mode,
            "image_id": str(self.image_id),
            "width": width,
            "height": height,
            "embedding_reused": self.embedding_reused,
            "seconds": self.seconds,
            entries: self.entries,
        }


def run(ctx: WorkerContext, params: dict[str, Any], *, stop: Callable[[], bool]) -> Made:
    """Segment the job's stored image as its `params` ask; Canceled when `stop()` says so
    before the model runs (a segmentation takes seconds: nothing to stop inside it)."""
    settings = ctx.settings
    found = segmenter(settings)
    image_id = uuid.UUID(params["image_id"])
    stored = ctx.storage.get(f"{segment_image_prefix(image_id)}image.png")
    sam = found.sam  # loaded now on this process's first segmentation (model_unavailable)
    if sam.device.type == "cpu":
        engine.use_cpu_threads(cast(Any, sam), cpu_threads(settings.cpu_threads))
    if stop():
        raise Canceled("stopped before the model ran")
    picture = engine.to_rgb(engine.load_image(stored, field="image"))
    if params["mode"] == "proposals":
        return _proposals(found, picture, image_id, limits(settings, params.get("options")))
    return _prompts(found, picture, image_id, params["prompts"], limits(settings))


def _prompts(
    found: Any,
    picture: Image.Image,
    image_id: uuid.UUID,
    prompts: list[dict[str, Any]],
    config: SegmentConfig,
) -> Made:
    # Embeddings are kept per stored image (each tenant's own), never shared across tenants.
    done = found.segment(picture, prompts, config=config, scope=str(image_id))
    masks = [m.mask for m in done.instances]
    entries = [
        {"index": i, "score": float(m.score), "area": m.area, "box": mask_box(m.mask)}
        for i, m in enumerate(done.instances)
    ]
    return Made(
        mode="prompts",
        image_id=image_id,
        size=done.size,
        masks=masks,
        entries=entries,
        overlay=overlay(picture, masks, prompts),
        embedding_reused=done.embedding_reused,
        seconds={"embed": done.embed_s, "decode": done.decode_s},
    )


def _proposals(
    found: Any, picture: Image.Image, image_id: uuid.UUID, config: SegmentConfig
) -> Made:
    done = found.propose(picture, config=config, scope=str(image_id))
    masks = [c.mask for c in done.candidates]
    entries = [
        {
            "index": i,
            "score": float(c.score),
            "stability": float(c.stability),
            "area": c.area,
            "box": [int(v) for v in c.box],
            "point": [float(v) for v in c.point],
        }
        for i, c in enumerate(done.candidates)
    ]
    return Made(
        mode="proposals",
        image_id=image_id,
        size=done.size,
        masks=masks,
        entries=entries,
        overlay=overlay(picture, masks, []),
        embedding_reused=done.embedding_reused,
        seconds={"embed": done.embed_s, "decode": done.decode_s},
    )


def mask_box(mask: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] in pixels around the mask, x1 and y1 one past it; None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def overlay(
    picture: Image.Image, masks: Sequence[np.ndarray], prompts: Sequence[dict[str, Any]]
) -> Image.Image:
    """The image with each mask tinted in its instance's colour, and each instance's clicks
    (a dot: include, a cross: exclude) and box drawn in it, in the colours of the engine's
    layout previews and the console."""
    colours = engine.palette()
    pixels = np.asarray(picture, dtype=np.float32).copy()
    for i, mask in enumerate(masks):
        tint = np.array(colours[i % len(colours)], dtype=np.float32)
        pixels[mask] = (1 - TINT) * pixels[mask] + TINT * tint
    out = Image.fromarray(pixels.round().astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(out)
    r = max(2, round(MARK * max(out.size) / 512))
    for i, prompt in enumerate(prompts):
        colour = colours[i % len(colours)]
        if prompt.get("box"):
            draw.rectangle([float(v) for v in prompt["box"]], outline=colour, width=max(1, r // 2))
        points = prompt.get("points") or []
        for (x, y), label in zip(points, prompt.get("labels") or [1] * len(points), strict=True):
            if label:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(255, 255, 255))
            else:
                draw.line([x - r, y - r, x + r, y + r], fill=(0, 0, 0), width=max(1, r // 2))
                draw.line([x - r, y + r, x + r, y - r], fill=(0, 0, 0), width=max(1, r // 2))
    return out
