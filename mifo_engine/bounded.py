"""Bounded attention (METHOD section 4): regions and visibility masks as pure functions.

Shapes: B samples, S subjects, P = res*res pixels of one layer, T text tokens.
A visibility mask is boolean, True where a query may attend a key; `to_bias` turns it into
the additive bias the fused attention kernel takes. Where METHOD is silent these follow the
authors' implementation (docs/engine-api.md, "Where the method text is silent").
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
    # end-of-text, hidden from the background; the padding after it stays visible to every
    # pixel, as in the reference. None when the prompt was cut before its end token.
    eos: int | None


def box_regions(boxes: torch.Tensor, res: int) -> torch.Tensor:
    """Rasterise (S, 4) normalised boxes to (S, res*res) as the reference does.

    Rows round(y0*res) to round(y1*res) and columns round(x0*res) to round(x1*res), half-open,
    rounding halves to even like Python's `round` (in float64, so a box given as Python floats
    lands on the same cells). A box too thin to keep a cell that way keeps the cell under its
    centre, so its subject is never hidden from every pixel.
    """
    scaled = boxes.detach().to("cpu", torch.float64) * res
    x0, y0, x1, y1 = torch.round(scaled).long().unbind(-1)
    idx = torch.arange(res)
    rows = (idx >= y0[:, None]) & (idx < y1[:, None])  # (S, res)
    cols = (idx >= x0[:, None]) & (idx < x1[:, None])
    inside = rows[:, :, None] & cols[:, None, :]
    empty = ~inside.flatten(1).any(dim=-1)
    if empty.any():
        cy = ((scaled[:, 1] + scaled[:, 3]) / 2).long().clamp(0, res - 1)
        cx = ((scaled[:, 0] + scaled[:, 2]) / 2).long().clamp(0, res - 1)
        which = empty.nonzero()[:, 0]
        inside[which, cy[which], cx[which]] = True
    return inside.flatten(1).to(boxes.device)


def mask_regions(masks: torch.Tensor, res: int) -> torch.Tensor:
    """(B, S, r, r) bool refined masks -> (B, S, res*res) at a layer, by nearest-exact (reference)."""
    b, s = masks.shape[:2]
    if masks.shape[-1] == res:
        return masks.reshape(b, s, res * res)
    resized = F.interpolate(masks.float(), size=(res, res), mode="nearest-exact")
    return resized.reshape(b, s, res * res) > 0


def fill_empty_masks(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B, S, P) refined masks, (S, P) boxes: an empty mask becomes its box, cut from the others.

    Subject by subject in order, as the reference does, so a mask that the cut empties is
    filled in its turn.
    """
    out = masks.clone()
    for b in range(out.shape[0]):
        for j in range(out.shape[1]):
            if not out[b, j].any():
                out[b] &= ~boxes[j]
                out[b, j] = boxes[j]
    return out


def background(regions: torch.Tensor) -> torch.Tensor:
    """(B, S, P) -> (B, P): pixels outside every region."""
    return ~regions.any(dim=1)


def cross_attention_visibility(
    regions: torch.Tensor, groups: TokenGroups, *, optimizing: bool
) -> torch.Tensor:
    """(B, S, P) regions -> (B, P, T): which pixel may see which token (conditional branch).

    Subject i's tokens are visible inside region i only - and, while the latent is being
    optimised, from the background too; fillers are hidden everywhere; the end-of-text
    token is hidden from the background, except while optimising. Every other position (the
    start token, content words, the padding) is visible to every pixel.
    """
    b, s, p = regions.shape
    allowed = torch.ones(b, p, groups.length, dtype=torch.bool, device=regions.device)
    bg = background(regions)
    for i, positions in enumerate(groups.subjects):
        see = regions[:, i] | bg if optimizing else regions[:, i]
        allowed[:, :, list(positions)] = see[:, :, None]
    if groups.fillers:
        allowed[:, :, list(groups.fillers)] = False
    if groups.eos is not None and not optimizing:
        allowed[:, :, groups.eos] = ~bg
    return allowed


def self_attention_visibility(regions: torch.Tensor) -> torch.Tensor:
    """(B, S, P) regions -> (B, P, P): a pixel of subject i sees subject i and the background;
    a background pixel sees everything."""
    r = regions.float()
    share = torch.einsum("bsq,bsk->bqk", r, r) > 0
    bg = background(regions)
    return share | bg[:, :, None] | bg[:, None, :]


def to_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, Q, K) visibility -> (B, 1, Q, K) additive bias: 0 where allowed, the dtype's lowest
    finite value elsewhere (as the reference; unlike -inf it cannot turn a row into NaN)."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


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
    return TokenGroups(len(ids), subjects, filler_pos, end if end < len(ids) else None)
