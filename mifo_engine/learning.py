"""MIFO learning (METHOD sections 2-3): disentangled tokens, then an appearance fine-tune."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from diffusers.optimization import get_scheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

from .attention import CaptureController, installed_processors
from .concept import BaseRef, Concept, TokenInfo
from .config import LearnConfig
from .errors import ConfigError
from .inputs import PreparedInputs, instance_names, prepare_inputs
from .layers import AttnLayer, AttnStructure, LearnBlocks, learn_blocks, pick, unet_attention_layers
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

if TYPE_CHECKING:
    from .models import LoadedBase

log = logging.getLogger(__name__)


def learn(
    base: LoadedBase,
    image: Any,
    masks: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    config: LearnConfig | None = None,
    progress: ProgressFn | None = None,
) -> Concept:
    """Learn one token per mask from one image; the base model is left as it was."""
    # 1. Check inputs
    cfg = config or LearnConfig()
    resolution = cfg.resolution or base.resolution
    layers, blocks = _layers(base, cfg, resolution // base.vae_scale_factor)
    inputs = prepare_inputs(image, masks, resolution=resolution, config=cfg)
    n = inputs.masks.shape[0]
    names = instance_names(names, n)
    init_words = _init_words(cfg.init_words, n)
    tokens = [f"<asset{i}>" for i in range(n)]
    # 2. Initial embeddings of the new tokens
    rows = _initial_rows(base, init_words, cfg.seed)
    with contextlib.ExitStack() as stack:
        # 3. Prepare the model: every change is undone when the stack closes
        stack.enter_context(backend_settings(base.device, cfg.tf32))
        stack.enter_context(training_state(base.unet, base.text_encoder, base.vae))
        tokenizer = stack.enter_context(extended_vocabulary(base, tokens, rows))
        # 4. Prepare the run's fixed inputs: latents, masks, prompts, attention layers
        prepared = _prepare(base, tokenizer, tokens, inputs, cfg, (layers, blocks))
        run = _Run(base, tokenizer, prepared, cfg, progress)
        stack.enter_context(installed_processors(base.unet, run.capture.processors()))
        # 5. Phase 1: the new token rows
        run.phase1()
        # 6. Phase 2: the appearance fine-tune
        adaptation, unet_w, text_w = _phase2(stack, run, base, cfg)
        # 7. Diagnostics: attention leakage and heat maps
        diagnostics, maps = run.diagnostics()
        # 8. The learned rows
        table = _table(base.text_encoder)
        embeddings = {
            t: table[prepared.token_ids[i]].detach().float().cpu().clone()
            for i, t in enumerate(tokens)
        }
    # 9. The concept
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
        coarsest_attention_resolution=min(layer.resolution for layer in prepared.layers),
        versions=versions(),
        diagnostics=diagnostics,
        attention_maps=maps,
        input_image=inputs.image_rgb,
        input_masks=Concept.mask_images(inputs.masks),
    )


def _layers(base: LoadedBase, cfg: LearnConfig, latent: int) -> tuple[list[AttnLayer], LearnBlocks]:
    """The UNet's attention layers and the blocks the run reads; ConfigError, before any
    work, where `cfg` names a layer this model lacks."""
    layers = unet_attention_layers(base.unet.attn_processors, base.unet.config, latent)
    return layers, learn_blocks(AttnStructure.from_layers(layers, latent), cfg)


def _phase2(
    stack: contextlib.ExitStack, run: _Run, base: LoadedBase, cfg: LearnConfig
) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run phase 2 as configured: the adaptation kind and the weights it learned."""
    if not (cfg.phase2 and cfg.phase2_steps > 0):
        return "none", {}, {}
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
        return "lora", _cpu(lora_parameters(base.unet)), _cpu(lora_parameters(base.text_encoder))
    stack.enter_context(preserved_weights(base.unet))
    stack.enter_context(preserved_weights(base.text_encoder))
    run.phase2(list(base.unet.parameters()), _text_params_without_table(base.text_encoder), latents)
    # The token table is the concept's own tokens (stored apart) plus the base's rows: found
    # by identity, as its key differs between text encoder classes and transformers versions.
    table = _table(base.text_encoder)
    skip = {k for k, p in base.text_encoder.named_parameters() if p is table}
    text_w = {k: v for k, v in _cpu(base.text_encoder.state_dict()).items() if k not in skip}
    return cfg.phase2_mode, _cpu(base.unet.state_dict()), text_w


@dataclass(frozen=True)
class _Sample:
    subset: tuple[int, ...]
    flip: int
    timestep: int


@dataclass(frozen=True)
class _Prepared:
    """What a learning run reads and never changes, built in one place (`_prepare`)."""

    tokens: list[str]
    token_ids: list[int]
    scheduler: DDPMScheduler
    layers: list[AttnLayer]
    phase1_layers: list[AttnLayer]  # the attention loss of phase 1
    phase2_layers: list[AttnLayer]  # the attention loss of phase 2
    decoder_layers: list[AttnLayer]  # the diagnostics
    # the VAE posterior once per flip state (METHOD 1): (2, C, l, l) each, and its scaling
    post_mean: torch.Tensor
    post_std: torch.Tensor
    scaling: float
    latent_masks: torch.Tensor  # (2, N, l, l): the reconstruction masks, per flip state
    layer_masks: dict[int, torch.Tensor]  # resolution -> (2, N, r*r): attention-loss masks
    masks_full: torch.Tensor  # (N, R, R)
    image_rgb: Any
    class_ids: torch.Tensor | None  # the class prompt's ids with prior preservation

    @property
    def n(self) -> int:
        """The number of instances."""
        return len(self.tokens)

    @property
    def n_vocab(self) -> int:
        """Every embedding row below this id is the base vocabulary."""
        return self.token_ids[0]


@torch.no_grad()
def _prepare(
    base: LoadedBase,
    tokenizer: Any,
    tokens: list[str],
    inputs: PreparedInputs,
    cfg: LearnConfig,
    chosen: tuple[list[AttnLayer], LearnBlocks],
) -> _Prepared:
    """Encode the image, resize the masks and pick the attention layers, once per run."""
    device = base.device
    latent = inputs.image.shape[-1] // base.vae_scale_factor
    layers, blocks = chosen
    vae = base.vae
    pixels = torch.stack([inputs.image, inputs.image.flip(-1)]).to(device, vae.dtype)
    dist = vae.encode(pixels).latent_dist
    masks = torch.stack([inputs.masks, inputs.masks.flip(-1)]).to(device)  # (2, N, R, R)
    resolutions = {lay.resolution for lay in layers}
    class_ids = None
    if cfg.prior_preservation:
        assert cfg.class_prompt is not None
        class_ids = _token_ids(tokenizer, cfg.class_prompt).to(device)
    return _Prepared(
        tokens=tokens,
        token_ids=tokenizer.convert_tokens_to_ids(tokens),
        scheduler=DDPMScheduler(
            num_train_timesteps=cfg.train_timesteps,
            beta_start=cfg.beta_start,
            beta_end=cfg.beta_end,
            beta_schedule=cfg.beta_schedule,
            prediction_type=base.scheduler_config.get("prediction_type", "epsilon"),
        ),
        layers=layers,
        phase1_layers=pick(layers, "cross", blocks.phase1),
        phase2_layers=pick(layers, "cross", blocks.phase2),
        decoder_layers=pick(layers, "cross", blocks.diagnostics),
        post_mean=dist.mean.float(),
        post_std=dist.std.float(),
        scaling=vae.config["scaling_factor"],
        # nearest and bilinear, as the reference resizes the two masks
        latent_masks=torch.stack([resize_masks(m, latent, "nearest") for m in masks]),
        layer_masks={
            r: torch.stack([resize_masks(m, r, "bilinear").flatten(1) for m in masks])
            for r in resolutions
        },
        masks_full=inputs.masks,
        image_rgb=inputs.image_rgb,
        class_ids=class_ids,
    )


def _token_ids(tokenizer: Any, text: str) -> torch.Tensor:
    """(1, 77) ids of one prompt, padded as the text encoder reads them."""
    return tokenizer(
        text,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


class _Run:
    """One learning run: the prepared inputs, the draws, prompt ids and the capture controller.

    Its only changing state is the two generators' position and a memo of tokenised prompts.
    """

    def __init__(
        self,
        base: LoadedBase,
        tokenizer: Any,
        prepared: _Prepared,
        cfg: LearnConfig,
        progress: ProgressFn | None,
    ) -> None:
        self.base, self.tokenizer, self.prep, self.cfg, self.progress = (
            base,
            tokenizer,
            prepared,
            cfg,
            progress,
        )
        self.device = base.device
        self.gen = torch.Generator("cpu").manual_seed(cfg.seed)
        self.noise_gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.capture = CaptureController(
            prepared.phase1_layers + prepared.phase2_layers + prepared.decoder_layers
        )
        self._prompts: dict[tuple[int, ...], tuple[torch.Tensor, list[int]]] = {}

    def _prompt(self, subset: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        key = tuple(subset)
        if key not in self._prompts:
            self._prompts[key] = self._tokenize(key)
        return self._prompts[key]

    def _tokenize(self, subset: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        text = f"{self.cfg.prompt_prefix} " + " and ".join(self.prep.tokens[i] for i in subset)
        ids = _token_ids(self.tokenizer, text)
        row = ids[0].tolist()
        positions = [row.index(self.prep.token_ids[i]) for i in subset]
        return ids.to(self.device), positions

    def _text(
        self,
        ids: torch.Tensor,
        subset: tuple[int, ...],
        cache: dict[tuple[int, ...], torch.Tensor] | None,
    ) -> torch.Tensor:
        """Text encoder outputs; kept in `cache` per prompt (when given: a frozen encoder)."""
        if cache is None:
            return self.base.text_encoder(ids)[0]
        key = subset if ids.shape[0] == 1 else (*subset, -1)  # -1: with the class prompt
        if key not in cache:
            with torch.no_grad():
                cache[key] = self.base.text_encoder(ids)[0]
        return cache[key]

    def _draw(self) -> _Sample:
        n = self.prep.n
        k = int(torch.randint(1, n + 1, (1,), generator=self.gen)) if self.cfg.joint_sampling else 1
        subset = tuple(torch.randperm(n, generator=self.gen)[:k].tolist())
        flip = int(torch.rand((), generator=self.gen) < self.cfg.flip_prob)
        t = int(torch.randint(0, self.cfg.train_timesteps, (1,), generator=self.gen))
        return _Sample(subset, flip, t)

    # --- one training step
    def _noised(
        self, s: _Sample, ids: torch.Tensor, class_latent: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A posterior draw (with the class latent) noised to the sample's timestep: the
        noisy latent, the timesteps, the prediction target and the prompt ids to go with it."""
        prep = self.prep
        z0 = prep.post_mean[s.flip] + prep.post_std[s.flip] * torch.randn(
            prep.post_mean.shape[1:], generator=self.noise_gen, device=self.device
        )
        z0 = (z0 * prep.scaling)[None]
        if class_latent is not None:
            assert prep.class_ids is not None
            z0 = torch.cat([z0, class_latent[None]])
            ids = torch.cat([ids, prep.class_ids])
        noise = torch.randn(z0.shape, generator=self.noise_gen, device=self.device)
        t = torch.full((z0.shape[0],), s.timestep, device=self.device, dtype=torch.long)
        zt = prep.scheduler.add_noise(z0, noise, cast(torch.IntTensor, t))
        target = (
            noise
            if prep.scheduler.config["prediction_type"] == "epsilon"
            else prep.scheduler.get_velocity(z0, noise, cast(torch.IntTensor, t))
        )
        return zt, t, target, ids

    def _losses(
        self,
        s: _Sample,
        layers: list[AttnLayer],
        term: str,
        lam: float,
        class_latent: torch.Tensor | None,
        text_cache: dict[tuple[int, ...], torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        cfg, prep = self.cfg, self.prep
        ids, positions = self._prompt(s.subset)
        zt, t, target, ids = self._noised(s, ids, class_latent)
        active = term != "none" and s.timestep < cfg.t_attn
        self.capture.reset(active)
        self.capture.select([lay.name for lay in layers])
        with autocast(self.device, cfg.precision):
            cond = self._text(ids, s.subset, text_cache)
            pred = self.base.unet(zt, t, encoder_hidden_states=cond).sample
        union = prep.latent_masks[s.flip, list(s.subset)].amax(dim=0)
        out = {"rec": cfg.lambda_rec * masked_reconstruction_loss(target[:1], pred[:1], union)}
        if class_latent is not None:
            out["prior"] = cfg.prior_loss_weight * torch.nn.functional.mse_loss(
                pred[1:].float(), target[1:].float()
            )
        if active:
            maps = [token_maps(self.capture.maps[lay.name].float(), positions) for lay in layers]
            masks = [prep.layer_masks[lay.resolution][s.flip, list(s.subset)] for lay in layers]
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
        table = _table(self.base.text_encoder)
        n_vocab = self.prep.n_vocab
        frozen_rows = table[:n_vocab].detach().clone()
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
                table.grad[:n_vocab] = 0
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                table[:n_vocab] = frozen_rows  # only the new tokens may move
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
        table = _table(self.base.text_encoder)
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
            return self._losses(self._draw(), self.prep.phase1_layers, term, lam, None, None)

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
        # a frozen text encoder gives the same outputs for a prompt: computed once each
        text_cache: dict[tuple[int, ...], torch.Tensor] | None = {}
        if cfg.phase2_train_text_encoder:
            table = _table(self.base.text_encoder)
            params += [*text_params, table]
            groups = [{"params": params[:-1], "lr": lr}, {"params": [table], "lr": cfg.phase2_lr}]
            text_cache = None
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
                self._draw(),
                self.prep.phase2_layers,
                term,
                cfg.phase2_lambda_penalty,
                latent,
                text_cache,
            )

        with self._training():
            self._train("phase2", cfg.phase2_steps, params, opt, sched, step_fn)
        for p in params:
            p.requires_grad_(False)

    @torch.no_grad()
    def class_latents(self) -> torch.Tensor:
        """Generate the prior-preservation class images once, as latents."""
        from .sampling import generate_latents

        cfg = self.cfg
        assert cfg.class_prompt is not None
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
                    latent_size=self.prep.post_mean.shape[-1],
                )[0]
            )
        report(self.progress, Progress("prior", cfg.num_class_images, cfg.num_class_images))
        return torch.stack(out)

    @torch.no_grad()
    def diagnostics(self) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
        """Attention leakage per token (METHOD 6) and one heat map per token."""
        cfg, prep = self.cfg, self.prep
        ids, positions = self._prompt(range(prep.n))
        res = max(lay.resolution for lay in prep.decoder_layers)
        acc = torch.zeros(prep.n, res * res, device=self.device)
        gen = torch.Generator(self.device).manual_seed(cfg.seed + 1)
        z0 = (prep.post_mean[0] * prep.scaling)[None]
        self.capture.select([lay.name for lay in prep.decoder_layers])
        cond = self.base.text_encoder(ids)[0]
        for k, step in enumerate(cfg.diagnostic_timesteps):
            report(self.progress, Progress("diagnostics", k, len(cfg.diagnostic_timesteps)))
            t = torch.tensor([step], device=self.device)
            zt = prep.scheduler.add_noise(
                z0,
                torch.randn(z0.shape, generator=gen, device=self.device),
                cast(torch.IntTensor, t),
            )
            self.capture.reset(True)
            with autocast(self.device, cfg.precision):
                self.base.unet(zt, t, encoder_hidden_states=cond)
            for lay in prep.decoder_layers:
                m = token_maps(self.capture.maps[lay.name].float(), positions)  # (N, r*r)
                r = lay.resolution
                acc += torch.nn.functional.interpolate(
                    m.view(prep.n, 1, r, r), size=(res, res), mode="bilinear", align_corners=False
                ).flatten(1)
        self.capture.reset(False)
        masks = (
            prep.layer_masks[res][0]
            if res in prep.layer_masks
            else resize_masks(prep.masks_full.to(self.device), res, "bilinear").flatten(1)
        )
        outside, others = leakage(acc, masks)
        diag = {
            t: {
                "leakage_outside_mask": float(outside[i]),
                "leakage_into_other_instances": float(others[i]),
            }
            for i, t in enumerate(prep.tokens)
        }
        maps = {
            t: heat_map(acc[i].view(res, res), prep.image_rgb) for i, t in enumerate(prep.tokens)
        }
        return diag, maps


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
def _initial_rows(base: LoadedBase, words: Sequence[str | None], seed: int) -> torch.Tensor:
    """Initial embedding per token: the mean embedding of its init word, or seeded random."""
    table = _table(base.text_encoder).float()
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


def _table(text_encoder: torch.nn.Module) -> torch.nn.Parameter:
    """The token embedding table of a text encoder."""
    return cast(torch.nn.Parameter, text_encoder.get_input_embeddings().weight)  # type: ignore[operator]


def _text_params_without_table(text_encoder: torch.nn.Module) -> list[torch.nn.Parameter]:
    table = _table(text_encoder)
    return [p for p in text_encoder.parameters() if p is not table]
