"""The built-in base models: `tiny` (toy widths, for tests) and `sd21-random` (SD 2.1's
architecture with random weights, for benchmarks), and SD 2.1's component configs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .loading import Components, read_json
from .tokenizers import CLIP_MAX_LENGTH, sd21_random_tokenizer, tiny_tokenizer

if TYPE_CHECKING:
    import torch

    # The defining modules: diffusers' top-level names resolve to placeholders for type checkers.
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

_SD21_ASSETS = Path(__file__).parent / "assets" / "sd21"

# Tiny test model: the block layout of SD 2.1 (3 cross-attention down blocks + a plain one,
# cross-attention mid block, a plain up block + 3 cross-attention ones) at toy widths, so
# layer selection by place and resolution behaves as on the real UNet.
_TINY_UNET: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "attention_head_dim": [2, 2, 4, 4],  # diffusers' name for the head count: 16 channels/head
    "cross_attention_dim": 32,
    "use_linear_projection": True,
    "norm_num_groups": 32,
}
_TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
}
_TINY_TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": CLIP_MAX_LENGTH,
    "hidden_act": "gelu",
    "projection_dim": 32,
}


def build_tiny(seed: int = 0) -> Components:
    """A seeded random model with SD 2.1's layout at toy size: 64 px images, 32x32 latents."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_TINY_TEXT_ENCODER,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(_TINY_UNET)
        text_encoder = CLIPTextModel(text_config)
        vae = AutoencoderKL.from_config(_TINY_VAE)
    return unet, text_encoder.eval(), vae, tokenizer, sd21_scheduler_config()


def build_sd21_random(seed: int, device: torch.device) -> Components:
    """SD 2.1 base's architecture with seeded random weights, initialised on `device`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig.from_dict(sd21_text_encoder_config())
    tokenizer = sd21_random_tokenizer()
    # Initialising 1.3 B parameters on the target device is much faster than on CPU.
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(sd21_unet_config())
        text_encoder = CLIPTextModel(text_config)
        vae = AutoencoderKL.from_config(sd21_vae_config())
    return unet, text_encoder, vae, tokenizer, sd21_scheduler_config()


def tiny_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """The UNet and VAE configs of `tiny` (copies)."""
    return dict(_TINY_UNET), dict(_TINY_VAE)


def sd21_unet_config() -> dict[str, Any]:
    """The UNet2DConditionModel config of SD 2.1 base."""
    return read_json(_SD21_ASSETS / "unet_config.json")


def sd21_text_encoder_config() -> dict[str, Any]:
    """The CLIPTextModel config of SD 2.1 base (OpenCLIP ViT-H text tower)."""
    return read_json(_SD21_ASSETS / "text_encoder_config.json")


def sd21_vae_config() -> dict[str, Any]:
    """The AutoencoderKL config of SD 2.1 base."""
    return read_json(_SD21_ASSETS / "vae_config.json")


def sd21_scheduler_config() -> dict[str, Any]:
    """The noise scheduler config of SD 2.1 base (scaled-linear betas, epsilon prediction)."""
    return read_json(_SD21_ASSETS / "scheduler_config.json")


def build_unet_on_meta(config: Mapping[str, Any]) -> UNet2DConditionModel:
    """A UNet of the given config on the meta device: the module tree without memory."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(dict(config))
