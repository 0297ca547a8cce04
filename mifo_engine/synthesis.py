"""MIFO synthesis (METHOD section 4): bounded attention, latent optimisation, mask refinement."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .attention import (
    AttnLayer,
    MifoAttnProcessor,
    installed_processors,
    last_block,
    truncated_forward,
    unet_attention_layers,
)
from .concept import Concept
from .config import SynthesisConfig
from .controller import BoundedController
from .guidance import decay_weight, guidance_loss, optimise_latent, step_size
from .layers import AttnStructure, pick, synthesis_blocks
from .layout import Layout, validate_synthesis_request
from .render import layout_preview
from .runtime import (
    Progress,
    ProgressFn,
    atomic_directory,
    autocast,
    backend_settings,
    report,
    versions,
)
from .sampling import (
    ddim_scheduler,
    decode_images,
    encode_text,
    guided_noise,
    image_generators,
    initial_latents,
)

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    from .models import LoadedBase

log = logging.getLogger(__name__)


@dataclass
class SynthesisResult:
    """Generated images with their seeds, layout previews and each image's in-box shares."""

    images: list[Image.Image]
    seeds: list[int]
    previews: list[Image.Image]
    in_box_share: list[
        dict[str, float]
    ]  # per image: subject token -> share of its attention in its box
    layout: Layout
    config: SynthesisConfig
    concept_base: dict[str, Any]
    versions: dict[str, str]
    guidance_losses: list[float] = field(default_factory=list)  # normalised loss per guided step
    # per image: subject token -> its refined mask (bool, the refinement layer's side), as the
    # last refinement left it; empty where no refinement ran
    refined_masks: list[dict[str, np.ndarray]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The content of synthesis.json."""
        return {
            "prompt": self.layout.prompt,
            "boxes": {s.token: {"name": s.name, "box": list(s.box)} for s in self.layout.subjects},
            "config": self.config.to_dict(),
            "seeds": self.seeds,
            "images": [
                {
                    "file": f"image_{k:02d}.png",
                    "preview": f"preview_{k:02d}.png",
                    "seed": s,
                    "in_box_share": d,
                }
                for k, (s, d) in enumerate(zip(self.seeds, self.in_box_share, strict=True))
            ],
            "guidance_losses": self.guidance_losses,
            "base_model": self.concept_base,
            "versions": self.versions,
        }

    def save(self, directory: str | Path) -> Path:
        """Write images, previews and synthesis.json atomically into a new directory."""
        with atomic_directory(directory) as tmp:
            for k, (image, preview) in enumerate(zip(self.images, self.previews, strict=True)):
                image.save(tmp / f"image_{k:02d}.png")
                preview.save(tmp / f"preview_{k:02d}.png")
            (tmp / "synthesis.json").write_text(json.dumps(self.record(), indent=2))
        return Path(directory)


def synthesize(
    base: LoadedBase,
    concept: Concept,
    prompt: str,
    boxes: Mapping[str, Sequence[float]] | None = None,
    *,
    config: SynthesisConfig | None = None,
    progress: ProgressFn | None = None,
) -> SynthesisResult:
    """Generate images of the concept's instances, each inside its box."""
    # 1. Check inputs
    cfg = config or SynthesisConfig()
    layout = validate_synthesis_request(concept.metadata(), prompt, boxes, base.tokenizer)
    seeds = cfg.image_seeds()
    # the attention layers, and ConfigError before any work where cfg names one this model lacks
    layers = unet_attention_layers(base.unet.attn_processors, base.unet.config, concept.latent_size)
    loss_layers, refine_layers = _controlled_layers(layers, cfg, concept.latent_size)
    with (
        backend_settings(base.device, cfg.tf32),
        concept.applied(base) as tokenizer,
        torch.no_grad(),
    ):
        # 2. Encode the prompt and the negative prompt
        cond, ids = encode_text(base, tokenizer, layout.prompt)
        uncond, _ = encode_text(base, tokenizer, cfg.negative_prompt)
        cond, uncond = cond.expand(len(seeds), -1, -1), uncond.expand(len(seeds), -1, -1)
        # 3. Prepare timesteps
        scheduler = ddim_scheduler(base, cfg.steps)
        # 4. Prepare the starting latents, one generator per image
        generators = image_generators(seeds)
        latents = initial_latents(base, generators, concept.latent_size)
        latents = latents * scheduler.init_noise_sigma
        # 5. Prepare the bounded attention: controller and attention processors
        controller = BoundedController(
            layout, tokenizer, ids, len(seeds), cfg, base.device, loss_layers, refine_layers
        )
        control = cfg.box_control and bool(layout.subjects)
        processors = _processors(layers, controller, control)
        # 6. Denoising loop, with latent optimisation and mask refinement
        with installed_processors(base.unet, processors):
            loop = _Loop(base, controller, scheduler, generators, cond, uncond, cfg, control)
            latents, losses = _denoise(loop, latents, progress)
        # 7. Decode
        images = decode_images(base, latents)
    # 8. Diagnostics and previews
    return SynthesisResult(
        images=images,
        seeds=seeds,
        previews=_previews(images, layout, concept),
        in_box_share=controller.in_box_shares(),
        layout=layout,
        config=cfg,
        concept_base=concept.metadata()["base_model"],
        versions=versions(),
        guidance_losses=losses,
        refined_masks=_refined_masks(controller),
    )


def _refined_masks(controller: BoundedController) -> list[dict[str, np.ndarray]]:
    """Each image's refined subject masks, or none where no refinement ran."""
    if controller.masks is None:
        return []
    masks = controller.masks.detach().cpu().numpy().astype(bool)
    tokens = [s.token for s in controller.layout.subjects]
    return [{t: masks[i, k] for k, t in enumerate(tokens)} for i in range(masks.shape[0])]


def _previews(images: list[Image.Image], layout: Layout, concept: Concept) -> list[Image.Image]:
    """Each image with its boxes and names drawn, in the colours of the concept's tokens."""
    labels = {s.token: f"{s.token} {s.name}" for s in layout.subjects}
    boxes = {s.token: s.box for s in layout.subjects}
    order = [t.token for t in concept.tokens]
    return [layout_preview(image, boxes, labels, order) for image in images]


def _processors(
    layers: Sequence[AttnLayer], controller: BoundedController, control: bool
) -> dict[str, MifoAttnProcessor]:
    """Bounded attention on every layer, or (without box control) on the diagnostics' only."""
    if not controller.layout.subjects:
        return {}
    if control:
        return {lay.name: MifoAttnProcessor(lay, controller) for lay in layers}
    return {lay.name: MifoAttnProcessor(lay, controller) for lay in controller.diagnostic_layers}


@dataclass(frozen=True)
class _Loop:
    """What the denoising loop reads: model, controller, schedule, prompts and switches."""

    base: LoadedBase
    controller: BoundedController
    scheduler: DDIMScheduler
    generators: list[torch.Generator]
    cond: torch.Tensor
    uncond: torch.Tensor
    cfg: SynthesisConfig
    control: bool  # box control on and at least one subject


def _denoise(
    loop: _Loop, latents: torch.Tensor, progress: ProgressFn | None
) -> tuple[torch.Tensor, list[float]]:
    """DDIM steps; the first `guidance_steps` optimise the latent first (Eq. 15), and the
    masks are refined at the configured steps. The final latents and the guidance losses."""
    base, controller, scheduler, cfg = loop.base, loop.controller, loop.scheduler, loop.cfg
    losses: list[float] = []
    refining = loop.control and cfg.mask_refinement
    refine_steps = range(cfg.refine_start, cfg.steps if refining else 0, cfg.refine_every)
    # the reference averages the maps from the first step on; after the last refinement
    # nothing reads them
    last_refine = refine_steps[-1] if refine_steps else -1
    report(progress, Progress("synthesis", 0, cfg.steps))
    for tau, t in enumerate(scheduler.timesteps):
        loss = None
        if loop.control and tau < cfg.guidance_steps:
            latents, loss = _optimise(base, controller, latents, t, loop.cond, tau, cfg)
            losses.append(loss)
        if tau in refine_steps:
            controller.refine()
        controller.accumulating = tau < last_refine
        noise = guided_noise(
            base, latents, t, loop.uncond, loop.cond, cfg.guidance_scale, cfg.precision
        )
        latents = scheduler.step(
            noise,
            t,
            latents,
            eta=cfg.eta,
            generator=loop.generators,  # type: ignore[arg-type]  # a list: one per image
            return_dict=False,
        )[0]
        losses_now = {} if loss is None else {"guidance": loss}
        report(progress, Progress("synthesis", tau + 1, cfg.steps, losses_now))
    return latents, losses


def _controlled_layers(
    layers: Sequence[AttnLayer], cfg: SynthesisConfig, latent_size: int
) -> tuple[list[AttnLayer], list[AttnLayer]]:
    """The loss layers (cross then self) and the refinement layers (self then cross), in the
    blocks `cfg` names (`layers.synthesis_blocks`): ConfigError where the model lacks one."""
    blocks = synthesis_blocks(AttnStructure.from_layers(layers, latent_size), cfg)
    loss = [
        lay for kind in ("cross", "self") for b in blocks.loss for lay in pick(layers, kind, {b})
    ]
    refine = (
        []
        if blocks.refine is None
        else [lay for kind in ("self", "cross") for lay in pick(layers, kind, {blocks.refine})]
    )
    return loss, refine


def _optimise(
    base: LoadedBase,
    controller: BoundedController,
    latents: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    tau: int,
    cfg: SynthesisConfig,
) -> tuple[torch.Tensor, float]:
    """Eq. 15: a few gradient steps on the latent, conditional branch only.

    The forward pass stops after the last block a loss layer lives in (on SD 2.1 the first
    decoder block): the blocks after it cannot change the loss.
    """
    alpha = decay_weight(tau, cfg)
    subjects = latents.shape[0] * len(controller.layout.subjects)
    controller.mode = "optimize"
    try:
        with truncated_forward(
            last_block(base.unet, controller.loss_layers or controller.diagnostic_layers)
        ) as run:

            def loss_at(z: torch.Tensor) -> tuple[torch.Tensor, float]:
                with autocast(base.device, cfg.precision):
                    run(functools.partial(base.unet, z, t, encoder_hidden_states=cond))
                loss = guidance_loss(*controller.masses(), alpha, cfg)
                return loss, float(loss.detach()) / subjects

            return optimise_latent(
                latents,
                loss_at,
                step=step_size(tau, cfg),
                iters=cfg.max_guidance_iters,
                threshold=cfg.loss_threshold,
            )
    finally:
        controller.mode = "denoise"
        controller.opt_maps.clear()
