"""Mask refinement by clustering self-attention (Bounded Attention), with a small k-means.

The k-means is written here because no library serves: torch has none, scikit-learn works on
NumPy arrays off the GPU, and torch_kmeans (the reference's) imports scikit-learn; this one is
batched over images and restarts and runs where the attention maps already are.
"""

from __future__ import annotations

import torch


class MeanMap:
    """Mean of the attention maps added so far; the refinement reads it and never resets it.

    The reference keeps one running mean from the first denoising step on, so each refinement
    sees every step before it.
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, maps: torch.Tensor) -> None:
        self.total = maps if self.total is None else self.total + maps
        self.count += 1

    def mean(self) -> torch.Tensor | None:
        return None if self.total is None else self.total / self.count


def normalise_columns(maps: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, P, K) -> each key column divided by its maximum over the pixels (plus eps)."""
    return maps / (maps.amax(dim=1, keepdim=True) + eps)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    iters: int,
    tol: float,
    inits: int,
    generator: torch.Generator,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Lloyd k-means: x (B, N, D) -> labels (B, N), centroids (B, k, D).

    Without `init`, `inits` seeded random starts (k distinct points each) run side by side and
    the one with the lowest inertia (sum of squared distances) is kept; `init` warm-starts a
    single run instead, which makes later refinements follow the first. A run stops after
    `iters` updates, or once the mean shift of the centroids is below `tol` in every run;
    empty clusters keep their centroid. Labels are each point's nearest final centroid.
    """
    b, n, d = x.shape
    x = x.float()
    if init is None:
        order = torch.rand(b, inits, n, generator=generator).argsort(dim=-1)[..., :k]
        picks = order.to(x.device).reshape(b, inits * k)
        centroids = torch.gather(x, 1, picks[:, :, None].expand(-1, -1, d)).view(b, inits, k, d)
    else:
        centroids = init.float()[:, None]  # (B, 1, k, D)
    sq = (x**2).sum(-1)[:, None, :, None]  # (B, 1, N, 1)

    def distances(c: torch.Tensor) -> torch.Tensor:  # (B, R, N, k) squared, without copies of x
        dot = torch.einsum("bnd,brkd->brnk", x, c)
        return (sq - 2 * dot + (c**2).sum(-1)[:, :, None, :]).clamp_min(0)

    for _ in range(iters):
        labels = distances(centroids).argmin(dim=-1)
        onehot = torch.nn.functional.one_hot(labels, k).float()  # (B, R, N, k)
        counts = onehot.sum(dim=2)  # (B, R, k)
        sums = torch.einsum("brnk,bnd->brkd", onehot, x)
        updated = sums / counts.clamp_min(1)[..., None]
        new = torch.where(counts[..., None] > 0, updated, centroids)
        shift = (new - centroids).norm(dim=-1).mean(dim=-1)  # (B, R)
        centroids = new
        if bool((shift < tol).all()):
            break
    dist = distances(centroids)
    nearest, labels = dist.min(dim=-1)  # (B, R, N)
    best = nearest.sum(dim=-1).argmin(dim=-1)  # (B,) lowest inertia
    rows = torch.arange(b, device=x.device)
    return labels[rows, best], centroids[rows, best]


def soft_cross_attention_masks(
    ca: torch.Tensor, regions: torch.Tensor, *, sharpness: float, offset: float, eps: float
) -> torch.Tensor:
    """(B, S, P) soft subject masks from cross-attention maps, inside the current regions.

    As the reference: each map over its maximum, sigmoid(sharpness * (map - offset)), then
    rescaled to [0, 1] by its own minimum and maximum.
    """
    norm = ca / (ca.amax(dim=-1, keepdim=True) + eps)
    soft = torch.sigmoid(sharpness * (norm - offset))
    lo = soft.amin(dim=-1, keepdim=True)
    hi = soft.amax(dim=-1, keepdim=True)
    return (soft - lo) / (hi - lo + eps) * regions.float()


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
