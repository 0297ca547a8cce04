"""Reversible changes to a base model: new tokens, LoRA adapters, full weights.

A worker keeps one base model for its whole life, so every change made for a learning run or
a synthesis must be undone on exit, also when the run fails.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from .models import LoadedBase

UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER = "mifo"


@contextlib.contextmanager
def extended_vocabulary(
    base: LoadedBase, tokens: Sequence[str], rows: torch.Tensor
) -> Iterator[Any]:
    """Add `tokens` with embedding `rows` (N, D); yields a tokenizer that knows them."""
    tokenizer = copy.deepcopy(base.tokenizer)
    added = tokenizer.add_tokens(list(tokens))
    if added != len(tokens):
        raise ValueError(f"tokens {list(tokens)} clash with the base vocabulary")
    encoder = base.text_encoder
    old = cast(nn.Embedding, encoder.get_input_embeddings())
    n_old, dim = old.weight.shape
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if ids != list(range(n_old, n_old + len(tokens))):
        raise ValueError(
            f"tokenizer ({len(tokenizer)} ids) and text encoder ({n_old} rows) disagree"
        )
    new = nn.Embedding(n_old + len(tokens), dim, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight[:n_old] = old.weight
        new.weight[n_old:] = rows.to(new.weight)
    new.weight.requires_grad_(False)
    encoder.set_input_embeddings(new)
    try:
        yield tokenizer
    finally:
        encoder.set_input_embeddings(old)


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The LoRA adapter parameters of a model, by name."""
    return {n: p for n, p in model.named_parameters() if ".lora_" in n}


@contextlib.contextmanager
def lora_adapters(
    unet: nn.Module,
    text_encoder: nn.Module,
    *,
    rank: int,
    alpha: int,
    seed: int,
    weights: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Iterator[None]:
    """Wrap attention projections with LoRA adapters (fresh, or loaded from `weights`)."""
    from peft import LoraConfig, inject_adapter_in_model

    pairs = (("unet", unet, UNET_LORA_TARGETS), ("text_encoder", text_encoder, TEXT_LORA_TARGETS))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _, model, targets in pairs:
                cfg = LoraConfig(
                    r=rank,
                    lora_alpha=alpha,
                    target_modules=list(targets),
                    # loaded weights overwrite the initial ones: skip drawing them
                    init_lora_weights=weights is None,
                )
                inject_adapter_in_model(cfg, model, adapter_name=ADAPTER)
        for key, model, _ in pairs:
            params = lora_parameters(model)
            for p in params.values():
                p.requires_grad_(False)
            if weights is not None:
                _load_exact(model, params, weights[key], key)
        yield
    finally:
        _unload_lora(unet, text_encoder)


def _load_exact(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    state: Mapping[str, torch.Tensor],
    key: str,
) -> None:
    missing = set(params) - set(state)
    unexpected = set(state) - set(params)
    if missing or unexpected:
        raise ValueError(
            f"{key} adapter weights do not fit this model: {len(missing)} missing, {len(unexpected)} unexpected"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


def _unload_lora(unet: nn.Module, text_encoder: nn.Module) -> None:
    """Put back the layers the adapters wrap, as diffusers unloads LoRA weights.

    The UNet's own `unload_lora`, and for the text encoder the helper diffusers' LoRA loaders
    use on it; both also forget the adapter config.
    """
    from diffusers.utils import recurse_remove_peft_layers

    cast(Any, unet).unload_lora()
    recurse_remove_peft_layers(text_encoder)
    if hasattr(text_encoder, "peft_config"):
        del text_encoder.peft_config


@contextlib.contextmanager
def swapped_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Load `state` (a subset of the model's parameters) and put the originals back on exit."""
    own = model.state_dict()
    unknown = set(state) - set(own)
    if unknown:
        raise ValueError(
            f"{len(unknown)} weights do not belong to this model, e.g. {sorted(unknown)[0]}"
        )
    backup = {k: own[k].detach().to("cpu", copy=True) for k in state}
    try:
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)
        yield
    finally:
        with torch.no_grad():
            for k, v in backup.items():
                own[k].copy_(v)


@contextlib.contextmanager
def preserved_weights(model: nn.Module) -> Iterator[None]:
    """Keep a CPU copy of every weight and put it back on exit (full fine-tune)."""
    backup = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    try:
        yield
    finally:
        own = model.state_dict()
        with torch.no_grad():
            for k, v in backup.items():
                own[k].copy_(v)


@contextlib.contextmanager
def training_state(*models: nn.Module) -> Iterator[None]:
    """Restore requires_grad flags and train/eval mode of `models` on exit."""
    flags = [[p.requires_grad for p in m.parameters()] for m in models]
    modes = [m.training for m in models]
    try:
        yield
    finally:
        for m, fl, mode in zip(models, flags, modes, strict=True):
            for p, f in zip(m.parameters(), fl, strict=True):
                p.requires_grad_(f)
                p.grad = None
            m.train(mode)
