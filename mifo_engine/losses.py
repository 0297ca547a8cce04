"""Learning losses of METHOD section 2 (Eq. 1-5), as pure functions on tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F


def resize_masks(
    masks: torch.Tensor, size: int, mode: Literal["bilinear", "nearest"]
) -> torch.Tensor:
    """Resize (N, H, W) masks to (N, size, size), without antialiasing (as the reference).

    The reference resizes the attention-loss masks bilinearly and the reconstruction mask by
    nearest neighbour (torch's "nearest": the source pixel at floor(i * H / size)).
    """
    if masks.shape[-1] == size and masks.shape[-2] == size:
        return masks
    extra = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(masks[:, None].float(), size=(size, size), mode=mode, **extra)[:, 0]


def masked_reconstruction_loss(
    noise: torch.Tensor, noise_pred: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Eq. 4: mean((M * (eps - eps_theta))^2), with M broadcast over channels."""
    return ((mask * (noise.float() - noise_pred.float())) ** 2).mean()


def reward_loss(
    attn: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], *, alpha: float, weight: float
) -> torch.Tensor:
    """Eq. 2: weight * sum_l sum_i mean((alpha * M_i^l - A_i^l)^2).

    attn[l], masks[l]: (K, P) - the K sampled instances' attention and masks at layer l.
    """
    total = attn[0].new_zeros(())
    for a, m in zip(attn, masks, strict=True):
        total = total + ((alpha * m - a) ** 2).mean(dim=-1).sum()
    return weight * total


def penalty_loss(
    attn: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], *, weight: float
) -> torch.Tensor:
    """Eq. 3: weight * sum_l sum_i mean(((1 - M_i^l) * A_i^l)^2)."""
    total = attn[0].new_zeros(())
    for a, m in zip(attn, masks, strict=True):
        total = total + (((1.0 - m) * a) ** 2).mean(dim=-1).sum()
    return weight * total


def token_maps(
    layer_maps: torch.Tensor, token_positions: Sequence[int], sample: int = 0
) -> torch.Tensor:
    """(B, P, T) head-averaged attention -> (K, P) columns of the given prompt positions."""
    return layer_maps[sample][:, list(token_positions)].transpose(0, 1)


def leakage(attn: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per instance: share of its attention mass outside its mask, and inside other masks.

    attn, masks: (N, P). Masks are soft; "inside another instance" counts the part of each
    pixel covered by the union of the other masks, whether or not the instance's own mask
    covers it too: attention on a pixel two instances share cannot tell them apart.
    """
    mass = attn.sum(dim=-1).clamp_min(1e-12)
    outside = ((1.0 - masks) * attn).sum(dim=-1) / mass
    others = []
    for i in range(masks.shape[0]):
        rest = torch.cat([masks[:i], masks[i + 1 :]])
        union = rest.amax(dim=0) if len(rest) else torch.zeros_like(masks[i])
        others.append((union * attn[i]).sum() / mass[i])
    return outside, torch.stack(others)
