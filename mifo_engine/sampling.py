"""DDIM sampling pieces shared by synthesis and prior-preservation class images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from PIL import Image

from .runtime import autocast

if TYPE_CHECKING:
    from .models import LoadedBase


def ddim_scheduler(base: LoadedBase, steps: int) -> DDIMScheduler:
    """A DDIM scheduler from the base model's noise schedule, set to `steps` steps."""
    scheduler = DDIMScheduler.from_config(base.scheduler_config)
    scheduler.set_timesteps(steps, device=base.device)
    return scheduler


@torch.no_grad()
def encode_text(base: LoadedBase, tokenizer: Any, prompt: str) -> tuple[torch.Tensor, list[int]]:
    """(1, T, D) text embeddings of one prompt, and its token ids."""
    ids = tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return base.text_encoder(ids.to(base.device))[0], ids[0].tolist()


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image: its starting noise and any later DDIM noise (eta > 0)."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def initial_latents(
    base: LoadedBase, generators: Sequence[torch.Generator], latent_size: int
) -> torch.Tensor:
    """One noise latent per image, each from its own generator (same images on any device)."""
    channels = base.unet.config["in_channels"]
    draws = [torch.randn((1, channels, latent_size, latent_size), generator=g) for g in generators]
    return torch.cat(draws).to(base.device, base.unet.dtype)


def guided_noise(
    base: LoadedBase,
    latents: torch.Tensor,
    t: torch.Tensor,
    uncond: torch.Tensor,
    cond: torch.Tensor,
    guidance_scale: float,
    precision: str,
) -> torch.Tensor:
    """Classifier-free guidance: one UNet pass on [unconditional, conditional]."""
    with autocast(base.device, precision):
        pred = base.unet(
            torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([uncond, cond])
        ).sample
    pred_uncond, pred_cond = pred.float().chunk(2)
    return pred_uncond + guidance_scale * (pred_cond - pred_uncond)


@torch.no_grad()
def decode_images(base: LoadedBase, latents: torch.Tensor) -> list[Image.Image]:
    """Latents -> RGB images."""
    vae = base.vae
    pixels = vae.decode(latents.to(vae.dtype) / vae.config["scaling_factor"]).sample
    arrays = (
        ((pixels.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255)
        .round()
        .astype(np.uint8)
    )
    return [Image.fromarray(a) for a in arrays]


@torch.no_grad()
def generate_latents(
    base: LoadedBase,
    tokenizer: Any,
    prompt: str,
    *,
    seed: int,
    steps: int,
    precision: str,
    guidance_scale: float = 7.5,
    latent_size: int | None = None,
) -> torch.Tensor:
    """Plain DDIM generation without box control; returns the final (1, C, l, l) latent."""
    scheduler = ddim_scheduler(base, steps)
    cond, _ = encode_text(base, tokenizer, prompt)
    uncond, _ = encode_text(base, tokenizer, "")
    latents = initial_latents(base, image_generators([seed]), latent_size or base.latent_size)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        noise = guided_noise(base, latents, t, uncond, cond, guidance_scale, precision)
        latents = scheduler.step(noise, t, latents, return_dict=False)[0]
    return latents
