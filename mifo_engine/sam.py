"""The segmentation model: Segment Anything (SAM) through transformers' `SamModel`.

A spec is `tiny` (a seeded random SAM at toy size: tests and demos only), a local folder
holding a transformers SAM checkpoint (`config.json`, `model.safetensors` or
`pytorch_model.bin`, optionally `preprocessor_config.json`), or a hub id
`owner/name[@revision]` served from the Hugging Face cache, downloaded once when missing.
The default is SAM ViT-B at a pinned commit (docs/engine-api.md, "Segmentation").
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .device import resolve_device
from .errors import ModelLoadError
from .hashing import files_sha256, state_dict_sha256
from .loading import own_memory, read_json, write_json
from .sources import first_line

if TYPE_CHECKING:
    import torch
    from transformers import SamModel

logger = logging.getLogger(__name__)

# SAM ViT-B, 93.7 M parameters; pinned so that masks stay reproducible.
DEFAULT_SEGMENT_MODEL = "facebook/sam-vit-base@70c1a07f894ebb5b307fd9eaaee97b9dfc16068f"
TINY_SAM = "tiny"
FIELD = "segment_model"
FIX = (
    "point the segmentation model at a local folder holding a transformers SAM checkpoint "
    "(config.json, model.safetensors, preprocessor_config.json), or fill the Hugging Face "
    "cache on a machine that can reach the hub"
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_FILES = ["config.json", "preprocessor_config.json", "model.safetensors"]
# transformers' SAM image processor normalises with ImageNet's mean and deviation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The tiny test model: SAM's layout (windowed and global attention, a two-way decoder with
# three multimask outputs) at toy widths, a 64 px input and 32 px low-resolution masks. The
# wider initialisation gives logits of order 1, so thresholds and stability mean something.
_TINY_SAM: dict[str, Any] = {
    "vision_config": {
        "hidden_size": 32,
        "output_channels": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 8,
        "window_size": 4,
        "global_attn_indexes": [1],
        "num_pos_feats": 16,  # 2 x 16 = the prompt encoder's width
        "mlp_dim": 64,
    },
    "prompt_encoder_config": {
        "hidden_size": 32,
        "image_size": 64,
        "patch_size": 8,
        "mask_input_channels": 8,
    },
    "mask_decoder_config": {
        "hidden_size": 32,
        "mlp_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "iou_head_hidden_dim": 32,
    },
    "initializer_range": 0.3,
}


@dataclass
class LoadedSam:
    """A loaded SAM: the model frozen and in eval mode, its input geometry and normalisation,
    and where it came from."""

    spec: str
    model_id: str
    revision: str | None
    weights_hash: str
    model: SamModel
    device: torch.device
    input_size: int  # side of the square the image encoder sees (1024 for SAM)
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def pixel_values(self, rgb: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """The encoder's input (1, 3, S, S) for an RGB image, and the image's (height, width)
        inside the square: scaled so the longer side is S (bilinear), normalised, padded at
        the right and bottom with zeros."""
        import torch

        height, width = scaled_size(rgb.width, rgb.height, self.input_size)
        scaled = np.asarray(rgb.resize((width, height), Image.Resampling.BILINEAR), np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        normalised = (scaled / np.float32(255.0) - mean) / std
        pixels = torch.zeros(1, 3, self.input_size, self.input_size)
        pixels[0, :, :height, :width] = torch.from_numpy(normalised).permute(2, 0, 1)
        dtype = next(self.model.parameters()).dtype
        return pixels.to(device=self.device, dtype=dtype), (height, width)


def scaled_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(height, width) of an image scaled so that its longer side is `side`, rounded."""
    scale = side / max(width, height)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def tiny_sam_config() -> dict[str, Any]:
    """The SamConfig of `tiny`, as keyword arguments (a copy)."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in _TINY_SAM.items()}


def build_tiny_sam(seed: int = 0) -> SamModel:
    """The seeded random `tiny` SAM (77.6 k parameters): the same weights for the same seed."""
    import torch
    from transformers import SamConfig, SamModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SamModel(SamConfig(**tiny_sam_config())).eval()


def load_sam(
    spec: str = DEFAULT_SEGMENT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
) -> LoadedSam:
    """Load a SAM from a spec: `tiny`, a local folder, or a hub id[@revision] (float32 by
    default); ModelLoadError naming `segment_model` when it cannot be found or read."""
    import torch

    started = time.perf_counter()
    target = device if isinstance(device, torch.device) else resolve_device(device)
    text = spec.strip()
    if text == TINY_SAM:
        model, model_id, revision, directory = build_tiny_sam(0), TINY_SAM, None, None
        weights_hash = state_dict_sha256({"sam": model})
    else:
        directory, model_id, revision = _directory(text, local_files_only, cache_dir)
        weights = _weight_files(directory)
        model = _from_directory(directory)
        weights_hash = files_sha256({"sam": weights})
    module: torch.nn.Module = model
    module.to(device=target, dtype=dtype or torch.float32)
    if target.type == "cpu" and directory is not None:
        own_memory(module)
    module.eval().requires_grad_(False)
    mean, std = _normalisation(directory)
    loaded = LoadedSam(
        spec=spec,
        model_id=model_id,
        revision=revision,
        weights_hash=weights_hash,
        model=model,
        device=target,
        input_size=int(model.config.vision_config.image_size),  # type: ignore[union-attr]
        image_mean=mean,
        image_std=std,
    )
    logger.info(
        "Loaded segmentation model %s (revision %s, weights %s) on %s in %.1f s",
        model_id,
        revision,
        weights_hash[:12],
        target,
        time.perf_counter() - started,
    )
    return loaded


def save_sam(loaded: LoadedSam, path: str | Path) -> Path:
    """Write a loaded SAM as a folder that `load_sam` (and transformers) read back."""
    root = Path(path)
    loaded.model.save_pretrained(root)
    write_json(
        root / "preprocessor_config.json",
        {
            "image_processor_type": "SamImageProcessor",
            "image_mean": list(loaded.image_mean),
            "image_std": list(loaded.image_std),
            "size": {"longest_edge": loaded.input_size},
            "pad_size": {"height": loaded.input_size, "width": loaded.input_size},
        },
    )
    return root


def check_sam_model(spec: str, *, cache_dir: str | Path | None = None) -> None:
    """Raise ModelLoadError unless `load_sam(spec)` can load it from this machine as it is
    (no download, no weights read, no torch)."""
    text = spec.strip()
    if text != TINY_SAM:
        directory, _, _ = _directory(text, True, cache_dir)
        _weight_files(directory)
        _sam_config(directory)


def sam_model_folder(
    spec: str, *, local_files_only: bool = False, cache_dir: str | Path | None = None
) -> Path | None:
    """Where the SAM of `spec` is: a local folder as it is, a hub id's snapshot fetched into
    the Hugging Face cache first unless it is there (or downloads are off); None for `tiny`,
    which is built in code. Nothing is loaded and no torch imported: a deployment fills its
    model cache with this. ModelLoadError naming `segment_model` when it cannot."""
    text = spec.strip()
    if text == TINY_SAM:
        return None
    directory, _, _ = _directory(text, local_files_only, cache_dir)
    _weight_files(directory)
    _sam_config(directory)
    return directory


def _directory(
    spec: str, local_files_only: bool, cache_dir: str | Path | None
) -> tuple[Path, str, str | None]:
    """The folder of a local or hub spec, the model's name, and the hub commit."""
    if not spec:
        raise ModelLoadError("No segmentation model was given.", field=FIELD, fix=FIX)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve(), str(path.resolve()), None
    repo, _, revision = spec.partition("@")
    if spec.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(repo):
        raise ModelLoadError(
            f"No segmentation model folder at {path.resolve()}, and '{spec}' is neither "
            f"'{TINY_SAM}' nor a hub id of the form owner/name[@revision].",
            field=FIELD,
            fix=FIX,
        )
    snapshot = _hub_snapshot(repo, revision or None, local_files_only, cache_dir)
    return snapshot, repo, snapshot.name


def _hub_snapshot(
    repo: str, revision: str | None, local_files_only: bool, cache_dir: str | Path | None
) -> Path:
    """The cached snapshot of a hub SAM, fetched first unless downloads are off."""
    from huggingface_hub import constants, snapshot_download

    where = f"hub repository {repo} at revision {revision or 'main'}"
    try:
        cached = Path(
            snapshot_download(
                repo,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=True,
                allow_patterns=_HUB_FILES,
            )
        )
        if (cached / "config.json").is_file() and (cached / "model.safetensors").is_file():
            return cached
    except Exception:  # the hub client raises several types for "not in the cache"
        pass
    if local_files_only or constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"Segmentation model {where} is not in the local cache, and hub downloads are off "
            "(local_files_only / offline mode).",
            field=FIELD,
            fix=FIX,
        )
    try:
        return Path(
            snapshot_download(
                repo, revision=revision, cache_dir=cache_dir, allow_patterns=_HUB_FILES
            )
        )
    except Exception as exc:  # transport, HTTP and cache errors alike
        raise ModelLoadError(
            f"Segmentation model {where} is not in the local cache and could not be fetched "
            f"({type(exc).__name__}: {first_line(exc)}).",
            field=FIELD,
            fix=FIX,
        ) from exc


def _weight_files(directory: Path) -> list[Path]:
    """The weight files of a SAM folder: safetensors if any, else .bin; ModelLoadError if none."""
    safetensors = sorted(directory.glob("*.safetensors"))
    weights = safetensors or sorted(directory.glob("*.bin"))
    if not weights or not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"Segmentation model folder {directory} is incomplete: it needs config.json and "
            "model.safetensors (or pytorch_model.bin).",
            field=FIELD,
            fix=FIX,
        )
    return weights


def _sam_config(directory: Path) -> dict[str, Any]:
    """The folder's config.json, checked to be a SAM's."""
    try:
        config = read_json(directory / "config.json")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"Segmentation model folder {directory}: config.json cannot be read ({exc}).",
            field=FIELD,
            fix=FIX,
        ) from exc
    if config.get("model_type") != "sam":
        raise ModelLoadError(
            f"Segmentation model folder {directory} holds a {config.get('model_type')!r} model, "
            "not a SAM (model_type 'sam').",
            field=FIELD,
            fix="use a Segment Anything checkpoint such as " + DEFAULT_SEGMENT_MODEL,
        )
    return config


def _from_directory(directory: Path) -> SamModel:
    from transformers import SamModel

    _sam_config(directory)
    try:
        return SamModel.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # loaders raise many unrelated types for one broken folder
        raise ModelLoadError(
            f"Segmentation model folder {directory} could not be loaded "
            f"({type(exc).__name__}: {first_line(exc)}).",
            field=FIELD,
            fix=FIX,
        ) from exc


def _normalisation(
    directory: Path | None,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The mean and deviation the checkpoint's image processor normalises with."""
    path = None if directory is None else directory / "preprocessor_config.json"
    if path is None or not path.is_file():
        return IMAGENET_MEAN, IMAGENET_STD
    try:
        config = read_json(path)
        mean = tuple(float(v) for v in config.get("image_mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in config.get("image_std", IMAGENET_STD))
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError("image_mean and image_std must be 3 numbers, the deviations > 0")
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(
            f"Segmentation model folder {directory}: preprocessor_config.json is not usable "
            f"({exc}).",
            field=FIELD,
            fix=FIX,
        ) from exc
    return mean, std  # type: ignore[return-value]
