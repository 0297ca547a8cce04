"""Instance masks from clicks: `Segmenter.segment` (prompts -> one mask per instance) and
`Segmenter.propose` (automatic candidate instances), on a Segment Anything model.

The image embedding, the costly part, is computed once per image and kept in a small LRU
cache keyed by the image's content (its pixels' sha256), so every further click on the same
image runs the prompt encoder and mask decoder only. Results say whether the embedding was
reused. Masks come out at the image's own size, as `mifo learn` reads them.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .inputs import ImageSource, load_image, to_rgb
from .maskpost import (
    best_by_iou,
    crop_low_res,
    dedupe,
    mask_boxes,
    mask_image,
    save_masks,
    stability_scores,
    threshold,
    upscale_logits,
)
from .sam import DEFAULT_SEGMENT_MODEL, LoadedSam, load_sam
from .segprompts import InstancePrompt, PromptLike, SegmentConfig, check_prompts

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_SEGMENT_MODEL",
    "Embedding",
    "InstanceMask",
    "Proposal",
    "Proposals",
    "Segmentation",
    "Segmenter",
    "load_segmenter",
]


@dataclass(frozen=True)
class Embedding:
    """One image's embedding and geometry, as the cache keeps it."""

    key: str  # sha256 of the image's size and RGB pixels
    size: tuple[int, int]  # (width, height)
    scaled: tuple[int, int]  # (height, width) of the image inside the encoder's square
    tensor: torch.Tensor  # (1, C, h, w)
    reused: bool  # taken from the cache
    seconds: float  # spent computing it (0 when reused)


@dataclass(frozen=True)
class InstanceMask:
    """The mask of one instance: the best of the model's candidates by predicted IoU."""

    mask: np.ndarray  # (H, W) bool, at the image's size
    score: float  # the chosen candidate's predicted IoU
    scores: tuple[float, ...]  # every candidate's predicted IoU, in the model's order
    choice: int  # index of the chosen candidate

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def image(self) -> Image.Image:
        """The mask as mifo learn reads it: mode "L", 255 on the instance, 0 elsewhere."""
        return mask_image(self.mask)


@dataclass(frozen=True)
class Segmentation:
    """One mask per prompted instance, in prompt order."""

    instances: tuple[InstanceMask, ...]
    size: tuple[int, int]  # (width, height) of the image and of every mask
    embedding_reused: bool
    embed_s: float  # computing the image embedding (0 when reused)
    decode_s: float  # prompts to masks, post-processing included

    def masks(self) -> list[Image.Image]:
        return [m.image() for m in self.instances]

    def save(self, directory: str | Path, prefix: str = "mask") -> list[Path]:
        """`<prefix>_00.png`, ... one per instance (mode "L", 0/255, the image's size)."""
        return save_masks([m.mask for m in self.instances], directory, prefix)


@dataclass(frozen=True)
class Proposal:
    """A candidate instance found without prompts."""

    mask: np.ndarray  # (H, W) bool, at the image's size
    score: float  # predicted IoU: the rank
    stability: float  # IoU of the mask under a threshold moved by +/- stability_offset
    box: tuple[int, int, int, int]  # [x0, y0, x1, y1] in pixels, x1/y1 one past the mask
    point: tuple[float, float]  # the grid point [x, y] that found it

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def image(self) -> Image.Image:
        return mask_image(self.mask)


@dataclass(frozen=True)
class Proposals:
    """Candidate instances, best first, de-duplicated."""

    candidates: tuple[Proposal, ...]
    size: tuple[int, int]
    points: int  # grid points tried
    passed: int  # candidates that passed the quality filters, before de-duplication
    embedding_reused: bool
    embed_s: float
    decode_s: float

    def masks(self) -> list[Image.Image]:
        return [p.image() for p in self.candidates]

    def save(self, directory: str | Path, prefix: str = "proposal") -> list[Path]:
        return save_masks([p.mask for p in self.candidates], directory, prefix)


def load_segmenter(
    spec: str = DEFAULT_SEGMENT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: SegmentConfig | None = None,
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
) -> Segmenter:
    """A `Segmenter` on the SAM of `spec` (`tiny`, a local folder, or a hub id[@revision]),
    loaded now: ModelLoadError here rather than at the first click."""
    sam = load_sam(
        spec, device=device, dtype=dtype, local_files_only=local_files_only, cache_dir=cache_dir
    )
    return Segmenter(sam, config)


class Segmenter:
    """Masks from prompts and automatic proposals on one SAM, with the embedding cache.

    `sam` is a loaded model or a spec (`tiny`, a local folder, a hub id[@revision]) loaded on
    first use with the keyword arguments of `load_sam`; a request refused for its prompts
    loads nothing. Safe to share between threads: loading and the cache are locked; two
    threads asking for the same new image may both compute its embedding.
    """

    def __init__(
        self,
        sam: LoadedSam | str = DEFAULT_SEGMENT_MODEL,
        config: SegmentConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.config = config or SegmentConfig()
        self.spec = sam.spec if isinstance(sam, LoadedSam) else sam
        self._sam = sam if isinstance(sam, LoadedSam) else None
        self._load_args = {
            "device": device,
            "dtype": dtype,
            "local_files_only": local_files_only,
            "cache_dir": cache_dir,
        }
        self._cache: OrderedDict[str, Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def sam(self) -> LoadedSam:
        """The model, loaded now if it was not yet (ModelLoadError if it cannot be)."""
        if self._sam is None:
            with self._load_lock:
                if self._sam is None:
                    self._sam = load_sam(self.spec, **self._load_args)  # type: ignore[arg-type]
        return self._sam

    @property
    def loaded(self) -> bool:
        return self._sam is not None

    def embed(self, image: ImageSource, *, scope: str = "") -> Embedding:
        """The image's embedding: from the cache when the same pixels were seen recently
        under the same `scope` (a caller serving several parties passes each its own, so
        that one cannot learn from a reused embedding what another segmented)."""
        rgb = to_rgb(load_image(image, field="image"))
        key = f"{scope}:{image_key(rgb)}" if scope else image_key(rgb)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return Embedding(key, cached.size, cached.scaled, cached.tensor, True, 0.0)
        embedding = self._compute(rgb, key)
        with self._lock:
            self.misses += 1
            self._cache[key] = embedding
            while len(self._cache) > self.config.embedding_cache_size:
                self._cache.popitem(last=False)
        return embedding

    def cached(self, image: ImageSource) -> bool:
        """Whether the image's embedding is in the cache now."""
        key = image_key(to_rgb(load_image(image, field="image")))
        with self._lock:
            return key in self._cache

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def segment(
        self,
        image: ImageSource,
        prompts: Sequence[PromptLike],
        *,
        config: SegmentConfig | None = None,
        scope: str = "",
    ) -> Segmentation:
        """One mask per instance of `prompts` (points [[x, y], ...] with labels 1 include /
        0 exclude, and/or a box [x0, y0, x1, y1], in image pixels); InputError naming the
        field for a prompt that cannot be used. `scope`: see `embed`."""
        import torch

        limits = config or self.config
        picture = load_image(image, field="image")
        checked = check_prompts(prompts, picture.size, limits)
        embedding = self.embed(picture, scope=scope)
        started = time.perf_counter()
        with torch.inference_mode():
            instances = tuple(self._instance(embedding, prompt) for prompt in checked)
        return Segmentation(
            instances=instances,
            size=embedding.size,
            embedding_reused=embedding.reused,
            embed_s=embedding.seconds,
            decode_s=time.perf_counter() - started,
        )

    def propose(
        self, image: ImageSource, *, config: SegmentConfig | None = None, scope: str = ""
    ) -> Proposals:
        """Candidate instances without prompts: a grid of points, each point's best mask,
        kept when its predicted IoU, stability and area pass the config's thresholds, then
        de-duplicated by mask IoU (the better-scored kept); best first, at most
        `max_proposals`. `scope`: see `embed`."""
        import torch

        settings = config or self.config
        embedding = self.embed(image, scope=scope)
        started = time.perf_counter()
        grid = grid_points(embedding.size, settings.points_per_side)
        with torch.inference_mode():
            logits, scores, stability, points = self._grid_candidates(embedding, grid, settings)
            candidates = self._finish_proposals(
                embedding, logits, scores, stability, points, settings
            )
        return Proposals(
            candidates=candidates,
            size=embedding.size,
            points=len(grid),
            passed=len(scores),
            embedding_reused=embedding.reused,
            embed_s=embedding.seconds,
            decode_s=time.perf_counter() - started,
        )

    # --- the model

    def _compute(self, rgb: Image.Image, key: str) -> Embedding:
        import torch

        started = time.perf_counter()
        pixels, scaled = self.sam.pixel_values(rgb)
        with torch.inference_mode():
            tensor = self.sam.model.get_image_embeddings(pixels)
        if tensor.device.type == "cuda":
            torch.cuda.synchronize(tensor.device)
        return Embedding(key, rgb.size, scaled, tensor, False, time.perf_counter() - started)

    def _decode(
        self,
        embedding: Embedding,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        box: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits (B, K, L, L) and predicted IoUs (B, K) of the multimask
        outputs, for B prompts: points (B, n, 2) with labels (B, n), and/or boxes (B, 4),
        in image pixels."""
        scale = self._scale(embedding)
        device = self.sam.device
        out = self.sam.model(
            image_embeddings=embedding.tensor,
            input_points=None if points is None else (points * scale).to(device)[None],
            input_labels=None if labels is None else labels.to(device)[None],
            input_boxes=None if box is None else (box * scale.repeat(2)).to(device)[None],
            multimask_output=True,
        )
        return out.pred_masks[0].float(), out.iou_scores[0].float()

    def _scale(self, embedding: Embedding) -> torch.Tensor:
        """Image pixels to the encoder's square: (x scale, y scale)."""
        import torch

        (width, height), (sh, sw) = embedding.size, embedding.scaled
        return torch.tensor([sw / width, sh / height])

    def _instance(self, embedding: Embedding, prompt: InstancePrompt) -> InstanceMask:
        import torch

        points = labels = box = None
        if prompt.points:
            points = torch.tensor([prompt.points], dtype=torch.float32)
            labels = torch.tensor([prompt.labels], dtype=torch.int64)
        if prompt.box is not None:
            box = torch.tensor([prompt.box], dtype=torch.float32)
        logits, scores = self._decode(embedding, points, labels, box)
        choice = int(best_by_iou(scores[0]))
        full = self._full_size(embedding, logits[0, choice])
        return InstanceMask(
            mask=threshold(full).cpu().numpy(),
            score=float(scores[0, choice]),
            scores=tuple(float(s) for s in scores[0]),
            choice=choice,
        )

    def _full_size(self, embedding: Embedding, logits: torch.Tensor) -> torch.Tensor:
        width, height = embedding.size
        return upscale_logits(
            logits,
            input_size=self.sam.input_size,
            scaled=embedding.scaled,
            size=(height, width),
        )

    # --- proposals

    def _grid_candidates(
        self, embedding: Embedding, grid: torch.Tensor, settings: SegmentConfig
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each grid point's best mask (low-resolution logits), kept when it passes the
        quality filters, judged on the image's part of the square: logits, scores,
        stabilities, points."""
        import torch

        kept: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, len(grid), settings.points_per_batch):
            points = grid[start : start + settings.points_per_batch, None, :]
            labels = torch.ones(points.shape[:2], dtype=torch.int64)
            logits, scores = self._decode(embedding, points, labels, None)
            choice = best_by_iou(scores)
            rows = torch.arange(len(choice))
            best, score = logits[rows, choice], scores[rows, choice]
            inside = self._crop(embedding, best)
            stability = stability_scores(inside, offset=settings.stability_offset)
            area = threshold(inside).float().mean(dim=(-1, -2))
            ok = (score >= settings.min_predicted_iou) & (stability >= settings.min_stability)
            ok &= (area > 0) & (area >= settings.min_area_share)
            kept.append((best[ok], score[ok], stability[ok], points[ok.cpu(), 0]))
        logits, scores, stability, points = (torch.cat(parts) for parts in zip(*kept, strict=True))
        return logits, scores, stability, points

    def _crop(self, embedding: Embedding, logits: torch.Tensor) -> torch.Tensor:
        return crop_low_res(logits, input_size=self.sam.input_size, scaled=embedding.scaled)

    def _finish_proposals(
        self,
        embedding: Embedding,
        logits: torch.Tensor,
        scores: torch.Tensor,
        stability: torch.Tensor,
        points: torch.Tensor,
        settings: SegmentConfig,
    ) -> tuple[Proposal, ...]:
        """De-duplicate on the low-resolution masks, then bring the best to the image's size."""
        inside = threshold(self._crop(embedding, logits))
        order = dedupe(inside, scores, settings.dedupe_iou)[: settings.max_proposals]
        proposals = []
        for index in order:
            mask = threshold(self._full_size(embedding, logits[index]))
            box = mask_boxes(mask[None])[0]
            if box is None:  # vanished at full size
                continue
            proposals.append(
                Proposal(
                    mask=mask.cpu().numpy(),
                    score=float(scores[index]),
                    stability=float(stability[index]),
                    box=box,
                    point=(float(points[index, 0]), float(points[index, 1])),
                )
            )
        return tuple(proposals)


def image_key(rgb: Image.Image) -> str:
    """sha256 of an RGB image's size and pixels: the embedding cache's key."""
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    digest.update(np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)).data)
    return digest.hexdigest()


def grid_points(size: tuple[int, int], per_side: int) -> torch.Tensor:
    """(per_side**2, 2) points [x, y] at the centres of a per_side x per_side grid of cells
    over an image of `size` (width, height), row by row."""
    import torch

    width, height = size
    steps = (torch.arange(per_side, dtype=torch.float32) + 0.5) / per_side
    ys, xs = torch.meshgrid(steps * height, steps * width, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)
