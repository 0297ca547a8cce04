"""Bounded attention (METHOD section 4): regions and visibility masks as pure functions.

Shapes: B samples, S subjects, P = res*res pixels of one layer, T text tokens.
A visibility mask is boolean, True where a query may attend a key; `to_bias` turns it into
the additive bias the fused attention kernel takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TokenGroups:
    """Prompt positions by role, for one prompt of T tokens."""

    length: int  # T
    subjects: tuple[tuple[int, ...], ...]  # positions of each subject's tokens
    fillers: tuple[int, ...]  # articles, prepositions, conjunctions: hidden everywhere
    end: tuple[int, ...]  # end-of-text and the padding after it


def box_regions(boxes: torch.Tensor, res: int) -> torch.Tensor:
    """Rasterise (S, 4) normalised boxes to (S, res*res): a cell belongs to a box when at
    least half of it is covered; the cell under the box centre always does."""
    edges = torch.arange(res + 1, dtype=torch.float32, device=boxes.device) / res
    lo, hi = edges[:-1], edges[1:]

    def cover(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (S,) -> (S, res) covered share
        return (torch.minimum(hi, b[:, None]) - torch.maximum(lo, a[:, None])).clamp_min(0) * res

    x0, y0, x1, y1 = boxes.float().unbind(-1)
    inside = (cover(y0, y1)[:, :, None] * cover(x0, x1)[:, None, :]) >= 0.5 - 1e-6
    cy = ((y0 + y1) / 2 * res).long().clamp(0, res - 1)
    cx = ((x0 + x1) / 2 * res).long().clamp(0, res - 1)
    inside[torch.arange(len(boxes)), cy, cx] = True
    return inside.flatten(1)


def mask_regions(masks: torch.Tensor, fallback: torch.Tensor, res: int) -> torch.Tensor:
    """(B, S, r, r) soft masks -> (B, S, res*res) bool at a layer; empty ones fall back to boxes."""
    b, s = masks.shape[:2]
    resized = F.interpolate(
        masks.float().flatten(0, 1)[:, None],
        size=(res, res),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    regions = resized.view(b, s, res * res) >= 0.5
    empty = ~regions.any(dim=-1, keepdim=True)
    return torch.where(empty, fallback[None].expand(b, -1, -1), regions)


def background(regions: torch.Tensor) -> torch.Tensor:
    """(B, S, P) -> (B, P): pixels outside every region."""
    return ~regions.any(dim=1)


def cross_attention_visibility(
    regions: torch.Tensor, groups: TokenGroups, *, optimizing: bool
) -> torch.Tensor:
    """(B, S, P) regions -> (B, P, T): which pixel may see which token (conditional branch).

    Subject i's tokens are visible inside region i only - and, while the latent is being
    optimised, from the background too; fillers are hidden everywhere; the end-of-text
    group is hidden from the background, except while optimising.
    """
    b, s, p = regions.shape
    allowed = torch.ones(b, p, groups.length, dtype=torch.bool, device=regions.device)
    bg = background(regions)
    for i, positions in enumerate(groups.subjects):
        see = regions[:, i] | bg if optimizing else regions[:, i]
        allowed[:, :, list(positions)] = see[:, :, None]
    if groups.fillers:
        allowed[:, :, list(groups.fillers)] = False
    if groups.end and not optimizing:
        allowed[:, :, list(groups.end)] = ~bg[:, :, None]
    return allowed


def self_attention_visibility(regions: torch.Tensor) -> torch.Tensor:
    """(B, S, P) regions -> (B, P, P): a pixel of subject i sees subject i and the background;
    a background pixel sees everything."""
    r = regions.float()
    share = torch.einsum("bsq,bsk->bqk", r, r) > 0
    bg = background(regions)
    return share | bg[:, :, None] | bg[:, None, :]


def to_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, Q, K) visibility -> (B, 1, Q, K) additive bias: 0 where allowed, -inf elsewhere."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, float("-inf"))[:, None]


def token_groups(
    token_strings: Sequence[str],
    subject_ids: Sequence[Sequence[int]],
    ids: Sequence[int],
    eos_id: int,
    fillers: Sequence[str],
) -> TokenGroups:
    """Classify the positions of a tokenised prompt (start token stays visible to all)."""
    end = ids.index(eos_id) if eos_id in ids else len(ids)
    filler_set = {f.lower() for f in fillers}
    filler_pos = tuple(
        p for p in range(1, end) if token_strings[p].lower().removesuffix("</w>") in filler_set
    )
    subjects = tuple(tuple(p for p in range(1, end) if ids[p] in set(sub)) for sub in subject_ids)
    return TokenGroups(len(ids), subjects, filler_pos, tuple(range(end, len(ids))))
