"""Reading and writing diffusers directories: the components, weights kept in own memory."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import ModelLoadError
from .sources import FIX, first_line
from .tokenizers import load_tokenizer_dir

if TYPE_CHECKING:
    import torch

    # The defining modules: diffusers' top-level names resolve to placeholders for type checkers.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

# unet, text encoder, vae, tokenizer, scheduler config: what every source yields
Components: TypeAlias = (
    "tuple[UNet2DConditionModel, CLIPTextModel, AutoencoderKL, CLIPTokenizer, dict[str, Any]]"
)


def load_directory(
    directory: Path, weights: Mapping[str, list[Path]], dtype: torch.dtype
) -> Components:
    """The components of a checked diffusers directory, each from the weight files picked."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    def load(cls: Any, component: str) -> Any:
        safetensors = weights[component][0].suffix == ".safetensors"
        return cls.from_pretrained(
            directory,
            subfolder=component,
            dtype=dtype,
            use_safetensors=safetensors,
            local_files_only=True,
        )

    try:
        unet = load(UNet2DConditionModel, "unet")
        text_encoder = load(CLIPTextModel, "text_encoder")
        vae = load(AutoencoderKL, "vae")
        scheduler_config = read_json(directory / "scheduler" / "scheduler_config.json")
    except Exception as exc:  # loaders raise many unrelated types for one broken directory
        raise ModelLoadError(
            f"Base model directory {directory} could not be loaded "
            f"({type(exc).__name__}: {first_line(exc)}).",
            field="model",
            fix=FIX,
        ) from exc
    tokenizer = load_tokenizer_dir(directory / "tokenizer")
    return unet, text_encoder, vae, tokenizer, scheduler_config


def own_memory(module: torch.nn.Module) -> None:
    """Copy CPU weights out of the file mapping the loader left them in.

    The service then survives the weight file being replaced, and the aligned copies compute
    bit-identically to freshly built weights (mapped tensors can be misaligned for SIMD).
    """
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        tensor.data = tensor.data.clone()


def save_directory(
    root: Path,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    scheduler_config: Mapping[str, Any],
) -> Path:
    """Write the components as a diffusers directory that `load_directory` (and diffusers) read."""
    import diffusers

    root.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(root / "unet")
    text_encoder.save_pretrained(root / "text_encoder")
    vae.save_pretrained(root / "vae")
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "scheduler").mkdir(exist_ok=True)
    scheduler_class = scheduler_config.get("_class_name", "PNDMScheduler")
    write_json(root / "scheduler" / "scheduler_config.json", scheduler_config)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    write_json(root / "model_index.json", index)
    return root


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file (ValueError if it holds anything else)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write a JSON object, keys sorted, as diffusers writes configs."""
    path.write_text(json.dumps(dict(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")
