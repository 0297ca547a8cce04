"""MIFO learning (METHOD sections 2-3): disentangled tokens, then an appearance fine-tune."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.optimization import get_scheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

from .attention import (
    AttnLayer,
    CaptureController,
    installed_processors,
    select_layers,
    unet_attention_layers,
)
from .concept import BaseRef, Concept, TokenInfo
from .config import LearnConfig
from .errors import ConfigError, InputError
from .inputs import PreparedInputs, prepare_inputs
from .losses import (
    leakage,
    masked_reconstruction_loss,
    penalty_loss,
    resize_masks,
    reward_loss,
    token_maps,
)
from .patching import (
    extended_vocabulary,
    lora_adapters,
    lora_parameters,
    preserved_weights,
    training_state,
)
from .render import heat_map
from .runtime import (
    LazyLosses,
    Progress,
    ProgressFn,
    autocast,
    autocast_dtype,
    backend_settings,
    make_optimizer,
    report,
    use_gradient_checkpointing,
    versions,
)

log = logging.getLogger(__name__)
TOKEN_EMBEDDING_KEY = "text_model.embeddings.token_embedding.weight"


def learn(
    base: Any,
    image: Any,
    masks: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    config: LearnConfig | None = None,
    progress: ProgressFn | None = None,
) -> Concept:
    """Learn one token per mask from one image; the base model is left as it was."""
    cfg = config or LearnConfig()
    resolution = cfg.resolution or base.resolution
    inputs = prepare_inputs(image, masks, resolution=resolution, config=cfg)
    n = inputs.masks.shape[0]
    names = _instance_names(names, n)
    init_words = _init_words(cfg.init_words, n)
    tokens = [f"<asset{i}>" for i in range(n)]

    rows = _initial_rows(base, init_words, cfg.seed)
    with contextlib.ExitStack() as stack:
        stack.enter_context(backend_settings(base.device, cfg.tf32))
        stack.enter_context(training_state(base.unet, base.text_encoder, base.vae))
        tokenizer = stack.enter_context(extended_vocabulary(base, tokens, rows))
        run = _Run(base, tokenizer, tokens, inputs, cfg, progress)
        stack.enter_context(installed_processors(base.unet, run.capture.processors()))
        run.phase1()
        unet_w: dict[str, torch.Tensor] = {}
        text_w: dict[str, torch.Tensor] = {}
        adaptation = "none"
        if cfg.phase2 and cfg.phase2_steps > 0:
            adaptation = cfg.phase2_mode
            latents = run.class_latents() if cfg.prior_preservation else None
            if cfg.phase2_mode == "lora":
                stack.enter_context(
                    lora_adapters(
                        base.unet,
                        base.text_encoder,
                        rank=cfg.lora_rank,
                        alpha=cfg.lora_alpha,
                        seed=cfg.seed,
                    )
                )
                run.phase2(
                    list(lora_parameters(base.unet).values()),
                    list(lora_parameters(base.text_encoder).values()),
                    latents,
                )
                unet_w = _cpu(lora_parameters(base.unet))
                text_w = _cpu(lora_parameters(base.text_encoder))
            else:
                stack.enter_context(preserved_weights(base.unet))
                stack.enter_context(preserved_weights(base.text_encoder))
                run.phase2(
                    list(base.unet.parameters()),
                    _text_params_without_table(base.text_encoder),
                    latents,
                )
                unet_w = _cpu(base.unet.state_dict())
                text_w = {
                    k: v
                    for k, v in _cpu(base.text_encoder.state_dict()).items()
                    if k != TOKEN_EMBEDDING_KEY
                }
        diagnostics, maps = run.diagnostics()
        table = base.text_encoder.get_input_embeddings().weight
        embeddings = {
            t: table[run.token_ids[i]].detach().float().cpu().clone() for i, t in enumerate(tokens)
        }

    return Concept(
        tokens=[TokenInfo(t, names[i], init_words[i]) for i, t in enumerate(tokens)],
        embeddings=embeddings,
        adaptation=adaptation,  # type: ignore[arg-type]
        unet_weights=unet_w,
        text_encoder_weights=text_w,
        base=BaseRef(base.spec, base.model_id, base.revision, base.weights_hash),
        config=cfg,
        resolution=resolution,
        latent_size=resolution // base.vae_scale_factor,
        coarsest_attention_resolution=min(layer.resolution for layer in run.layers),
        versions=versions(),
        diagnostics=diagnostics,
        attention_maps=maps,
        input_image=inputs.image_rgb,
    )


@dataclass(frozen=True)
class _Sample:
    subset: tuple[int, ...]
    flip: int
    timestep: int


class _Run:
    """State of one learning run: cached latents, masks, prompts and the capture controller."""

    def __init__(
        self,
        base: Any,
        tokenizer: Any,
        tokens: list[str],
        inputs: PreparedInputs,
        cfg: LearnConfig,
        progress: ProgressFn | None,
    ):
        self.base, self.tokenizer, self.tokens, self.cfg, self.progress = (
            base,
            tokenizer,
            tokens,
            cfg,
            progress,
        )
        self.device = base.device
        self.n = inputs.masks.shape[0]
        self.token_ids = tokenizer.convert_tokens_to_ids(tokens)
        self.n_vocab = self.token_ids[0]  # every row below this id is the base vocabulary
        self.gen = torch.Generator("cpu").manual_seed(cfg.seed)
        self.noise_gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.scheduler = DDPMScheduler(
            num_train_timesteps=cfg.train_timesteps,
            beta_start=cfg.beta_start,
            beta_end=cfg.beta_end,
            beta_schedule=cfg.beta_schedule,
            prediction_type=base.scheduler_config.get("prediction_type", "epsilon"),
        )
        latent = inputs.image.shape[-1] // base.vae_scale_factor
        self.layers = unet_attention_layers(base.unet.attn_processors, base.unet.config, latent)
        cross = dict(kind="cross", latent_size=latent)
        self.phase1_layers = select_layers(
            self.layers,
            places=[cfg.attn_loss_place],
            resolutions=cfg.attn_loss_resolutions,
            **cross,
        )  # type: ignore[arg-type]
        self.phase2_layers = select_layers(
            self.layers,
            places=cfg.phase2_attn_places,
            resolutions=cfg.phase2_attn_resolutions,
            **cross,
        )  # type: ignore[arg-type]
        self.decoder_layers = [
            lay for lay in self.layers if lay.kind == "cross" and lay.place == "up"
        ]
        self.capture = CaptureController(
            self.phase1_layers + self.phase2_layers + self.decoder_layers
        )
        self.image_rgb = inputs.image_rgb
        self._prompts: dict[tuple[int, ...], tuple[torch.Tensor, list[int]]] = {}
        self._text_cache: dict[tuple[int, ...], torch.Tensor] | None = None  # set while frozen
        self.precision = cfg.precision
        self._encode(inputs, latent)

    # --- cached inputs (METHOD 1: the VAE posterior once per flip state)
    @torch.no_grad()
    def _encode(self, inputs: PreparedInputs, latent: int) -> None:
        vae = self.base.vae
        pixels = torch.stack([inputs.image, inputs.image.flip(-1)]).to(self.device, vae.dtype)
        dist = vae.encode(pixels).latent_dist
        self.post_mean, self.post_std = dist.mean.float(), dist.std.float()
        self.scaling = vae.config.scaling_factor
        masks = torch.stack([inputs.masks, inputs.masks.flip(-1)]).to(self.device)  # (2, N, R, R)
        # (2, N, l, l); nearest and bilinear, as the reference resizes the two masks
        self.latent_masks = torch.stack([resize_masks(m, latent, "nearest") for m in masks])
        resolutions = {lay.resolution for lay in self.layers}
        self.layer_masks = {
            r: torch.stack([resize_masks(m, r, "bilinear").flatten(1) for m in masks])
            for r in resolutions
        }
        self.masks_full = inputs.masks

    def _prompt(self, subset: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        key = tuple(subset)
        if key not in self._prompts:
            self._prompts[key] = self._tokenize(key)
        return self._prompts[key]

    def _tokenize(self, subset: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        text = f"{self.cfg.prompt_prefix} " + " and ".join(self.tokens[i] for i in subset)
        ids = self.tokenizer(
            text,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        row = ids[0].tolist()
        positions = [row.index(self.token_ids[i]) for i in subset]
        return ids.to(self.device), positions

    def _text(self, ids: torch.Tensor, subset: tuple[int, ...]) -> torch.Tensor:
        """Text encoder outputs; cached per prompt while the text encoder is frozen."""
        if self._text_cache is None:
            return self.base.text_encoder(ids)[0]
        key = subset if ids.shape[0] == 1 else (*subset, -1)  # -1: with the class prompt
        if key not in self._text_cache:
            with torch.no_grad():
                self._text_cache[key] = self.base.text_encoder(ids)[0]
        return self._text_cache[key]

    def _draw(self) -> _Sample:
        k = (
            int(torch.randint(1, self.n + 1, (1,), generator=self.gen))
            if self.cfg.joint_sampling
            else 1
        )
        subset = tuple(torch.randperm(self.n, generator=self.gen)[:k].tolist())
        flip = int(torch.rand((), generator=self.gen) < self.cfg.flip_prob)
        t = int(torch.randint(0, self.cfg.train_timesteps, (1,), generator=self.gen))
        return _Sample(subset, flip, t)

    # --- one training step
    def _losses(
        self,
        s: _Sample,
        layers: list[AttnLayer],
        term: str,
        lam: float,
        class_latent: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        z0 = self.post_mean[s.flip] + self.post_std[s.flip] * torch.randn(
            self.post_mean.shape[1:], generator=self.noise_gen, device=self.device
        )
        z0 = (z0 * self.scaling)[None]
        ids, positions = self._prompt(s.subset)
        if class_latent is not None:
            z0 = torch.cat([z0, class_latent[None]])
            ids = torch.cat([ids, self._class_ids])
        noise = torch.randn(z0.shape, generator=self.noise_gen, device=self.device)
        t = torch.full((z0.shape[0],), s.timestep, device=self.device, dtype=torch.long)
        zt = self.scheduler.add_noise(z0, noise, t)
        target = (
            noise
            if self.scheduler.config.prediction_type == "epsilon"
            else self.scheduler.get_velocity(z0, noise, t)
        )
        active = term != "none" and s.timestep < cfg.t_attn
        self.capture.reset(active)
        self.capture.select([lay.name for lay in layers])
        with autocast(self.device, cfg.precision):
            cond = self._text(ids, s.subset)
            pred = self.base.unet(zt, t, encoder_hidden_states=cond).sample
        union = self.latent_masks[s.flip, list(s.subset)].amax(dim=0)
        out = {"rec": cfg.lambda_rec * masked_reconstruction_loss(target[:1], pred[:1], union)}
        if class_latent is not None:
            out["prior"] = cfg.prior_loss_weight * torch.nn.functional.mse_loss(
                pred[1:].float(), target[1:].float()
            )
        if active:
            maps = [token_maps(self.capture.maps[lay.name].float(), positions) for lay in layers]
            masks = [self.layer_masks[lay.resolution][s.flip, list(s.subset)] for lay in layers]
            if term == "reward":
                out["reward"] = reward_loss(maps, masks, alpha=cfg.reward_alpha, weight=lam)
            else:
                out["penalty"] = penalty_loss(maps, masks, weight=lam)
        return out

    def _train(
        self,
        phase: str,
        steps: int,
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        lr_schedule: Any,
        step_fn: Callable[[int], dict[str, torch.Tensor]],
    ) -> None:
        table = self.base.text_encoder.get_input_embeddings().weight
        frozen_rows = table[: self.n_vocab].detach().clone()
        # fp16 needs loss scaling to keep small gradients; bf16 and fp32 do not
        fp16 = autocast_dtype(self.device, self.cfg.precision) == torch.float16
        scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        report(self.progress, Progress(phase, 0, steps))
        for step in range(steps):
            losses = step_fn(step)
            total = torch.stack(list(losses.values())).sum()
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            if (
                table.grad is not None
            ):  # base rows are restored anyway: keep them out of the clip norm
                table.grad[: self.n_vocab] = 0
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                table[: self.n_vocab] = frozen_rows  # only the new tokens may move
            report(self.progress, Progress(phase, step + 1, steps, LazyLosses(losses)))

    @contextlib.contextmanager
    def _training(self) -> Iterator[None]:
        unet = self.base.unet
        use = use_gradient_checkpointing(self.device, self.cfg.gradient_checkpointing) and getattr(
            unet, "_supports_gradient_checkpointing", False
        )
        if use:
            unet.enable_gradient_checkpointing()
            unet.train()
        try:
            yield
        finally:
            if use:
                unet.disable_gradient_checkpointing()
                unet.eval()

    def phase1(self) -> None:
        """Train the new token rows only, with the reward-then-penalty attention loss."""
        cfg = self.cfg
        for p in [
            *self.base.unet.parameters(),
            *self.base.text_encoder.parameters(),
            *self.base.vae.parameters(),
        ]:
            p.requires_grad_(False)
        table = self.base.text_encoder.get_input_embeddings().weight
        table.requires_grad_(True)
        opt = make_optimizer(
            [{"params": [table], "lr": cfg.lr}],
            self.device,
            cfg.optimizer,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
        )
        sched = get_scheduler(
            "cosine_with_restarts",
            opt,
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=max(1, cfg.phase1_steps),
            num_cycles=cfg.lr_num_cycles,
        )

        def step_fn(step: int) -> dict[str, torch.Tensor]:
            term = cfg.attn_term(step)
            lam = cfg.lambda_reward if term == "reward" else cfg.lambda_penalty
            return self._losses(self._draw(), self.phase1_layers, term, lam, None)

        with self._training():
            self._train("phase1", cfg.phase1_steps, [table], opt, sched, step_fn)
        table.requires_grad_(False)

    def phase2(
        self,
        unet_params: list[torch.nn.Parameter],
        text_params: list[torch.nn.Parameter],
        class_latents: torch.Tensor | None,
    ) -> None:
        """Fine-tune adapters (or the whole UNet and text encoder) with the penalty term.

        The new token rows keep training at the full fine-tune rate; with the text encoder
        frozen they stay as phase 1 left them and its outputs are computed once per prompt.
        """
        cfg = self.cfg
        lr = cfg.phase2_lora_lr if cfg.phase2_mode == "lora" else cfg.phase2_lr
        params = list(unet_params)
        groups: list[dict[str, Any]] = [{"params": params, "lr": lr}]
        if cfg.phase2_train_text_encoder:
            table = self.base.text_encoder.get_input_embeddings().weight
            params += [*text_params, table]
            groups = [{"params": params[:-1], "lr": lr}, {"params": [table], "lr": cfg.phase2_lr}]
        else:
            self._text_cache = {}
        for p in params:
            p.requires_grad_(True)
        opt = make_optimizer(
            groups,
            self.device,
            cfg.optimizer,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
        )
        sched = get_scheduler("constant", opt)
        term = "none" if cfg.attn_loss == "none" else "penalty"

        def step_fn(step: int) -> dict[str, torch.Tensor]:
            latent = None if class_latents is None else class_latents[step % len(class_latents)]
            return self._losses(
                self._draw(), self.phase2_layers, term, cfg.phase2_lambda_penalty, latent
            )

        try:
            with self._training():
                self._train("phase2", cfg.phase2_steps, params, opt, sched, step_fn)
        finally:
            self._text_cache = None
        for p in params:
            p.requires_grad_(False)

    @torch.no_grad()
    def class_latents(self) -> torch.Tensor:
        """Generate the prior-preservation class images once, as latents."""
        from .sampling import generate_latents

        cfg = self.cfg
        assert cfg.class_prompt is not None
        self._class_ids = self.tokenizer(
            cfg.class_prompt,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        out = []
        for k in range(cfg.num_class_images):
            report(self.progress, Progress("prior", k, cfg.num_class_images))
            out.append(
                generate_latents(
                    self.base,
                    self.tokenizer,
                    cfg.class_prompt,
                    seed=cfg.seed + 1 + k,
                    steps=cfg.class_image_steps,
                    precision=cfg.precision,
                    latent_size=self.post_mean.shape[-1],
                )[0]
            )
        report(self.progress, Progress("prior", cfg.num_class_images, cfg.num_class_images))
        return torch.stack(out)

    @torch.no_grad()
    def diagnostics(self) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
        """Attention leakage per token (METHOD 6) and one heat map per token."""
        cfg = self.cfg
        ids, positions = self._prompt(range(self.n))
        res = max(lay.resolution for lay in self.decoder_layers)
        acc = torch.zeros(self.n, res * res, device=self.device)
        gen = torch.Generator(self.device).manual_seed(cfg.seed + 1)
        z0 = (self.post_mean[0] * self.scaling)[None]
        self.capture.select([lay.name for lay in self.decoder_layers])
        cond = self.base.text_encoder(ids)[0]
        for k, step in enumerate(cfg.diagnostic_timesteps):
            report(self.progress, Progress("diagnostics", k, len(cfg.diagnostic_timesteps)))
            t = torch.tensor([step], device=self.device)
            zt = self.scheduler.add_noise(
                z0, torch.randn(z0.shape, generator=gen, device=self.device), t
            )
            self.capture.reset(True)
            with autocast(self.device, cfg.precision):
                self.base.unet(zt, t, encoder_hidden_states=cond)
            for lay in self.decoder_layers:
                m = token_maps(self.capture.maps[lay.name].float(), positions)  # (N, r*r)
                r = lay.resolution
                acc += torch.nn.functional.interpolate(
                    m.view(self.n, 1, r, r), size=(res, res), mode="bilinear", align_corners=False
                ).flatten(1)
        self.capture.reset(False)
        masks = (
            self.layer_masks[res][0]
            if res in self.layer_masks
            else resize_masks(self.masks_full.to(self.device), res, "bilinear").flatten(1)
        )
        outside, others = leakage(acc, masks)
        diag = {
            t: {
                "leakage_outside_mask": float(outside[i]),
                "leakage_into_other_instances": float(others[i]),
            }
            for i, t in enumerate(self.tokens)
        }
        maps = {
            t: heat_map(acc[i].view(res, res), self.image_rgb) for i, t in enumerate(self.tokens)
        }
        return diag, maps


def _instance_names(names: Sequence[str] | None, n: int) -> list[str]:
    if names is None or len(names) == 0:
        return [f"asset{i}" for i in range(n)]
    names = [s.strip() for s in names]
    if len(names) != n:
        raise InputError(
            f"{len(names)} names given for {n} masks.",
            field="names",
            fix=f"give exactly {n} names, one per mask, in mask order",
        )
    if any(not s for s in names) or len(set(names)) != n:
        raise InputError(
            "Instance names must be non-empty and distinct.",
            field="names",
            fix="give each instance its own name",
        )
    if any(s.startswith("<") for s in names):
        raise InputError(
            "Instance names may not start with '<'.",
            field="names",
            fix="use plain words, e.g. 'red car'",
        )
    return names


def _init_words(words: Sequence[str], n: int) -> list[str | None]:
    if not words:
        return [None] * n
    if len(words) != n:
        raise ConfigError(
            f"{len(words)} init words given for {n} masks.",
            field="init_words",
            fix=f"give exactly {n} words, one per mask, or none",
        )
    if any(not w.strip() for w in words):
        raise ConfigError(
            "An init word is empty.", field="init_words", fix="give a word per instance, e.g. 'car'"
        )
    return [w.strip() for w in words]


@torch.no_grad()
def _initial_rows(base: Any, words: Sequence[str | None], seed: int) -> torch.Tensor:
    """Initial embedding per token: the mean embedding of its init word, or seeded random."""
    table = base.text_encoder.get_input_embeddings().weight.float()
    mean, std = table.mean(dim=0), table.std(dim=0)
    gen = torch.Generator("cpu").manual_seed(seed)
    rows = []
    for word in words:
        if word is None:
            rows.append(mean + std * torch.randn(table.shape[1], generator=gen).to(table.device))
        else:
            ids = base.tokenizer(word, add_special_tokens=False).input_ids
            rows.append(table[ids].mean(dim=0))
    return torch.stack(rows)


def _cpu(state: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in dict(state).items()}


def _text_params_without_table(text_encoder: Any) -> list[torch.nn.Parameter]:
    table = text_encoder.get_input_embeddings().weight
    return [p for p in text_encoder.parameters() if p is not table]
