"""Turning a mask decoder's outputs into masks: pure functions, testable on hand-made arrays.

The decoder predicts low-resolution logits over the padded square the image encoder saw (the
image scaled so its longer side fills the square, padded at the right and bottom). A mask at
the image's size is those logits scaled up to the square, cut to the image's part of it,
scaled to the image's size (bilinear both times) and thresholded at 0. The masks written are
ordinary instance masks: PNG, mode "L", 255 on the instance and 0 elsewhere, at the image's
size, as `mifo learn` and `mifo_engine.inputs` read them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MASK_THRESHOLD = 0.0  # logits above it are the instance


def upscale_logits(
    logits: torch.Tensor, *, input_size: int, scaled: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Low-resolution logits (..., L, L) over the padded `input_size` square, as logits
    (..., H, W) at the image's `size` (height, width); `scaled` is the image's (height, width)
    inside the square."""
    lead = logits.shape[:-2]
    flat = logits.reshape(-1, 1, *logits.shape[-2:]).float()
    square = F.interpolate(flat, (input_size, input_size), mode="bilinear", align_corners=False)
    cut = square[..., : scaled[0], : scaled[1]]
    full = F.interpolate(cut, size, mode="bilinear", align_corners=False)
    return full.reshape(*lead, *size)


def crop_low_res(logits: torch.Tensor, *, input_size: int, scaled: tuple[int, int]) -> torch.Tensor:
    """The part of low-resolution logits (..., L, L) that covers the image, not the padding."""
    side = logits.shape[-1]
    rows = math.ceil(scaled[0] * side / input_size)
    cols = math.ceil(scaled[1] * side / input_size)
    return logits[..., :rows, :cols]


def threshold(logits: torch.Tensor, level: float = MASK_THRESHOLD) -> torch.Tensor:
    """Binary masks: the pixels whose logit is above `level`."""
    return logits > level


def best_by_iou(scores: torch.Tensor) -> torch.Tensor:
    """Index of the highest predicted IoU along the last axis (the first of equals)."""
    return scores.argmax(dim=-1)


def stability_scores(
    logits: torch.Tensor, *, offset: float, level: float = MASK_THRESHOLD
) -> torch.Tensor:
    """How little a mask changes with its threshold: the IoU of the mask thresholded at
    `level + offset` and at `level - offset` (the first lies inside the second), per mask of
    (N, H, W); 0 for a mask that is empty even at the lower threshold."""
    flat = logits.reshape(logits.shape[0], -1)
    inner = (flat > level + offset).sum(dim=1)
    outer = (flat > level - offset).sum(dim=1)
    return torch.where(outer > 0, inner / outer.clamp(min=1), torch.zeros_like(inner).float())


def mask_boxes(masks: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """The box [x0, y0, x1, y1] of each binary mask of (N, H, W), in pixels, x1 and y1 one past
    the last pixel (so the box given back as a prompt covers the mask); None when empty."""
    boxes: list[tuple[int, int, int, int] | None] = []
    for mask in masks:
        rows = torch.nonzero(mask.any(dim=1)).flatten()
        cols = torch.nonzero(mask.any(dim=0)).flatten()
        if rows.numel() == 0:
            boxes.append(None)
            continue
        boxes.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
    return boxes


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of each mask of `a` (N, H, W) with each of `b` (M, H, W):
    (N, M), 0 where both are empty."""
    fa = a.reshape(a.shape[0], -1).float()
    fb = b.reshape(b.shape[0], -1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def dedupe(masks: torch.Tensor, scores: torch.Tensor, max_iou: float) -> list[int]:
    """Non-maximum suppression by mask IoU: indices of the masks kept, best score first; a
    mask is dropped when it overlaps a kept, better-scored one by more than `max_iou`."""
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    kept: list[int] = []
    for index in order:
        if kept and float(mask_iou(masks[index : index + 1], masks[kept]).max()) > max_iou:
            continue
        kept.append(index)
    return kept


def mask_image(mask: np.ndarray | torch.Tensor) -> Image.Image:
    """A binary (H, W) mask as an instance mask image: mode "L", 255 on the instance."""
    array = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return Image.fromarray(np.where(array.astype(bool), 255, 0).astype(np.uint8))


def save_masks(
    masks: Sequence[np.ndarray | torch.Tensor], directory: str | Path, prefix: str = "mask"
) -> list[Path]:
    """Write each mask as `<prefix>_00.png`, `<prefix>_01.png`, ... (mode "L", 0/255) in
    `directory` (created if missing); the paths, in order."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, mask in enumerate(masks):
        path = target / f"{prefix}_{i:02d}.png"
        mask_image(mask).save(path, format="PNG")
        paths.append(path)
    return paths
