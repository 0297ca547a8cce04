"""Latent optimisation terms of METHOD section 4 (Eq. 6-15), as pure functions."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .config import SynthesisConfig


def subject_masses(
    attn: torch.Tensor, context: torch.Tensor, regions: torch.Tensor, bg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mass from each subject's region (fg) and from the background (bg) to its context.

    attn: (B, Q, K) summed over heads; context: (B, S, K) weights of each subject's keys
    (its tokens + end-of-text for cross-attention, its region's pixels for self-attention);
    regions: (B, S, Q); bg: (B, Q). Returns fg, bg of shape (B, S).
    """
    to_ctx = torch.einsum("bqk,bsk->bsq", attn, context.to(attn.dtype))
    fg = (to_ctx * regions.to(attn.dtype)).sum(-1)
    out = (to_ctx * bg[:, None].to(attn.dtype)).sum(-1)
    return fg, out


def in_box_reward(fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Eq. 6-9: (1 - fg / (fg + bg))^2."""
    return (1.0 - fg / (fg + bg).clamp_min(1e-8)) ** 2


def out_of_box_penalty(bg: torch.Tensor) -> torch.Tensor:
    """Eq. 10: log(1 + bg)."""
    return torch.log1p(bg)


def decay_weight(tau: int, cfg: SynthesisConfig) -> float:
    """Eq. 11: linear alpha_max -> alpha_mid until alpha_mid_step, cosine to alpha_min at alpha_min_step."""
    if not cfg.alpha_decay:
        return cfg.alpha_max
    if tau <= cfg.alpha_mid_step:
        return cfg.alpha_max + (cfg.alpha_mid - cfg.alpha_max) * tau / max(1, cfg.alpha_mid_step)
    if tau >= cfg.alpha_min_step:
        return cfg.alpha_min
    phase = (tau - cfg.alpha_mid_step) / (cfg.alpha_min_step - cfg.alpha_mid_step)
    return cfg.alpha_min + (cfg.alpha_mid - cfg.alpha_min) * 0.5 * (1.0 + math.cos(math.pi * phase))


def step_size(tau: int, cfg: SynthesisConfig) -> float:
    """Eq. 15 step size: linear from step_size_start to step_size_end over the guidance steps."""
    if cfg.guidance_steps <= 1:
        return cfg.step_size_start
    return cfg.step_size_start + (cfg.step_size_end - cfg.step_size_start) * tau / (
        cfg.guidance_steps - 1
    )


def attention_term(
    fg: torch.Tensor, bg: torch.Tensor, alpha: float, cfg: SynthesisConfig
) -> torch.Tensor:
    """Eq. 12-13 per sample: sum_i R_i + alpha * P_i, with the switched-off terms left out."""
    total = torch.zeros(fg.shape[0], dtype=fg.dtype, device=fg.device)
    if cfg.in_box_term:
        total = total + in_box_reward(fg, bg).sum(-1)
    if cfg.out_box_term:
        total = total + alpha * out_of_box_penalty(bg).sum(-1)
    return total


def guidance_loss(
    ca: tuple[torch.Tensor, torch.Tensor] | None,
    sa: tuple[torch.Tensor, torch.Tensor] | None,
    alpha: float,
    cfg: SynthesisConfig,
) -> torch.Tensor:
    """Eq. 14: ca_weight * L_CA + sa_weight * L_SA, summed over samples and subjects."""
    terms = []
    if ca is not None:
        terms.append(cfg.ca_weight * attention_term(*ca, alpha, cfg).sum())
    if sa is not None:
        terms.append(cfg.sa_weight * attention_term(*sa, alpha, cfg).sum())
    return torch.stack(terms).sum() if terms else torch.zeros(())


def optimise_latent(
    latents: torch.Tensor,
    loss_at: Callable[[torch.Tensor], tuple[torch.Tensor, float]],
    *,
    step: float,
    iters: int,
    threshold: float,
) -> tuple[torch.Tensor, float]:
    """Eq. 15 iterated: z <- z - step * grad L(z), at most `iters` times.

    `loss_at(z)` gives the loss and its normalised value. The threshold is checked before an
    iteration, as the reference does: the update of the iteration whose loss fell under it is
    still applied, so every call makes at least one update. Returns the latent and the last
    normalised loss measured.
    """
    normalised = math.inf
    for _ in range(iters):
        if normalised < threshold:
            break
        z = latents.detach().requires_grad_(True)
        with torch.enable_grad():
            loss, normalised = loss_at(z)
            if not loss.requires_grad:  # no loss layer: nothing to follow
                break
            (grad,) = torch.autograd.grad(loss, z)
        latents = (z - step * grad).detach()
    return latents.detach(), normalised
