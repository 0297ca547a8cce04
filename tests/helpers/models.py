"""Seeded tiny base models of other shapes than SD 2.1's: UNets of 2, 3 and 4 levels, one
with two layers per block, one with an SD 1.x-like text encoder width, written as diffusers
directories that `load_base_model` reads like any other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mifo_engine.builtin import sd21_scheduler_config, tiny_configs
from mifo_engine.loading import save_directory
from mifo_engine.tokenizers import CLIP_MAX_LENGTH, tiny_tokenizer

_CROSS_DOWN, _PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
_CROSS_UP, _PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"


@dataclass(frozen=True)
class Shape:
    """A tiny pipeline: its UNet's blocks and widths, the text encoder's width, the scheduler's
    prediction type. Latent 16 (32 px images) keeps every run short."""

    down: tuple[str, ...]
    up: tuple[str, ...]
    channels: tuple[int, ...]
    layers_per_block: int = 1
    text_width: int = 32  # SD 2.x: 1024; SD 1.x: 768 (3/4 of it)
    linear_projection: bool = True  # SD 2.x: True; SD 1.x: False
    prediction: str = "epsilon"
    latent: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    def unet_config(self) -> dict[str, Any]:
        return {
            "sample_size": self.latent,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": list(self.down),
            "up_block_types": list(self.up),
            "block_out_channels": list(self.channels),
            "layers_per_block": self.layers_per_block,
            "attention_head_dim": [c // 16 for c in self.channels],  # heads of 16 channels
            "cross_attention_dim": self.text_width,
            "use_linear_projection": self.linear_projection,
            "norm_num_groups": 16,
            **self.extra,
        }


SHAPES: dict[str, Shape] = {
    # every level with cross-attention, the mid block at the same side as the coarsest up block
    "two_levels": Shape((_CROSS_DOWN,) * 2, (_CROSS_UP,) * 2, (32, 64)),
    # SD 2.1's layout one level shorter, with an SD 1.x-like text encoder (3/4 of SD 2's width,
    # no linear projection) and v prediction
    "three_levels_sd1_text": Shape(
        (_CROSS_DOWN, _CROSS_DOWN, _PLAIN_DOWN),
        (_PLAIN_UP, _CROSS_UP, _CROSS_UP),
        (32, 32, 64),
        text_width=24,
        linear_projection=False,
        prediction="v_prediction",
    ),
    # four levels, cross-attention on every one, two layers per block
    "four_levels_two_per_block": Shape(
        (_CROSS_DOWN,) * 4, (_CROSS_UP,) * 4, (16, 32, 32, 64), layers_per_block=2
    ),
}


def build_shape(shape: Shape, seed: int = 0) -> tuple[Any, ...]:
    """The components of a seeded random pipeline of `shape` (unet, text encoder, vae,
    tokenizer, scheduler config), as `mifo_engine.builtin.build_tiny` gives them."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=shape.text_width,
        intermediate_size=2 * shape.text_width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=shape.text_width,
    )
    scheduler = {**sd21_scheduler_config(), "prediction_type": shape.prediction}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(shape.unet_config())
        text_encoder = CLIPTextModel(text_config).eval()
        vae = AutoencoderKL.from_config(tiny_configs()[1])
    return unet, text_encoder, vae, tokenizer, scheduler


def save_shape(shape: Shape, directory: Path, seed: int = 0) -> Path:
    """`shape` written as a diffusers pipeline directory."""
    return save_directory(directory, *build_shape(shape, seed))
