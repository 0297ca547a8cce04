"""Mask refinement by clustering self-attention (Bounded Attention), with a small k-means."""

from __future__ import annotations

import torch


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    iters: int,
    generator: torch.Generator,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Lloyd k-means: x (B, N, D) -> labels (B, N), centroids (B, k, D).

    Seeded initial centroids (k distinct points per batch item) unless `init` warm-starts the
    fit, which makes later refinements follow the first one; empty clusters keep their centroid.
    """
    b, n, d = x.shape
    x = x.float()
    if init is None:
        picks = torch.stack([torch.randperm(n, generator=generator)[:k] for _ in range(b)]).to(
            x.device
        )
        centroids = torch.gather(x, 1, picks[:, :, None].expand(-1, -1, d))
    else:
        centroids = init.float().clone()
    labels = torch.zeros(b, n, dtype=torch.long, device=x.device)
    for _ in range(iters):
        labels = torch.cdist(x, centroids).argmin(dim=-1)
        onehot = torch.nn.functional.one_hot(labels, k).float()  # (B, N, k)
        counts = onehot.sum(dim=1)  # (B, k)
        sums = torch.einsum("bnk,bnd->bkd", onehot, x)
        updated = sums / counts.clamp_min(1)[:, :, None]
        new = torch.where(counts[:, :, None] > 0, updated, centroids)
        if torch.equal(new, centroids):
            break
        centroids = new
    return labels, centroids


def soft_cross_attention_masks(
    ca: torch.Tensor, regions: torch.Tensor, *, sharpness: float, offset: float
) -> torch.Tensor:
    """sigmoid(sharpness * (normalised CA map - offset)) inside the current region: (B, S, P)."""
    lo = ca.amin(dim=-1, keepdim=True)
    hi = ca.amax(dim=-1, keepdim=True)
    norm = (ca - lo) / (hi - lo).clamp_min(1e-8)
    return torch.sigmoid(sharpness * (norm - offset)) * regions.float()


def assign_clusters(
    labels: torch.Tensor, k: int, soft: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Give each cluster to the subject it overlaps best (intersection / min area); drop weak ones.

    labels (B, P), soft (B, S, P) -> masks (B, S, P) bool.
    """
    onehot = torch.nn.functional.one_hot(labels, k).float().transpose(1, 2)  # (B, k, P)
    inter = torch.einsum("bkp,bsp->bks", onehot, soft)
    area = torch.minimum(onehot.sum(-1)[:, :, None], soft.sum(-1)[:, None, :]).clamp_min(1e-8)
    score = inter / area  # (B, k, S)
    best, owner = score.max(dim=-1)  # (B, k)
    keep = best >= threshold
    assign = (
        torch.nn.functional.one_hot(owner, soft.shape[1]).bool() & keep[:, :, None]
    )  # (B, k, S)
    return torch.einsum("bkp,bks->bsp", onehot, assign.float()) > 0
