"""The feature models of the quality metrics: CLIP (text and image) and a DINO ViT (image).

Each is "tiny" (seeded random weights built in code, for tests), a local folder in
transformers' `save_pretrained` layout, or a hub id pinned to a commit (`owner/name@<sha>`),
served from the Hugging Face cache first. Each loads on its first use; `feature_models`
keeps the last set loaded, as a worker keeps its base model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .errors import ModelLoadError
from .evalconfig import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_DINO_MODEL,
    IMAGENET_MEAN_RGB,
    TINY_FEATURES,
    check_feature_spec,
)
from .sources import first_line
from .tokenizers import CLIP_MAX_LENGTH, tiny_tokenizer

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

BATCH = 16  # images per forward pass
_HUB_PROBE_TIMEOUT_S = 10.0
_HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
FEATURES_FIX = (
    "point clip_model / dino_model at a local folder written by transformers' save_pretrained "
    "(config.json, the weights, preprocessor_config.json and, for CLIP, the tokenizer files), "
    "or fill the Hugging Face cache with owner/name@<commit> on a machine that can reach the hub"
)

# Tiny test models: ViT towers on 32 px inputs in 8 px patches, 32 wide, two layers.
_TINY_VISION: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}
_TINY_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": CLIP_MAX_LENGTH,
}
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Provenance:
    """Where a feature model came from: its spec, id and hub commit (None if not a hub id)."""

    spec: str
    model_id: str
    revision: str | None

    def to_dict(self) -> dict[str, str | None]:
        return {"spec": self.spec, "id": self.model_id, "revision": self.revision}


@dataclass
class FeatureModels:
    """CLIP and DINO, each loaded on its first use; every embedding comes back L2-normalised
    as float64 rows, so that a dot product is a cosine."""

    clip_model: str = DEFAULT_CLIP_MODEL
    dino_model: str = DEFAULT_DINO_MODEL
    device: str = "cpu"
    local_files_only: bool = False
    cache_dir: str | None = None
    _clip: tuple[Any, Any, Any, Provenance] | None = field(default=None, repr=False)
    _dino: tuple[Any, Any, Provenance] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_feature_spec(self.clip_model, "clip_model")
        check_feature_spec(self.dino_model, "dino_model")

    # --- embeddings
    def text(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP text embeddings (n, d): the projected end-of-text state, 77 tokens at most."""
        import torch

        model, tokenizer, _, _ = self._clip_parts()
        limit = int(model.config.text_config.max_position_embeddings)
        rows = []
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(
                list(texts[start : start + BATCH]),
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
            ).to(model.device)
            with torch.no_grad():
                out = model.get_text_features(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                )
            rows.append(_rows(out.pooler_output))
        return _normalised(rows)

    def clip_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """CLIP image embeddings (n, d) of whole images, as CLIP's processor prepares them."""
        import torch

        model, _, processor, _ = self._clip_parts()
        rows = []
        for start in range(0, len(images), BATCH):
            pixels = _pixels(processor, images[start : start + BATCH], model)
            with torch.no_grad():
                rows.append(_rows(model.get_image_features(pixel_values=pixels).pooler_output))
        return _normalised(rows)

    def dino_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """DINO embeddings (n, d): the class token of the last layer, after its norm."""
        import torch

        model, processor, _ = self._dino_parts()
        rows = []
        for start in range(0, len(images), BATCH):
            pixels = _pixels(processor, images[start : start + BATCH], model)
            with torch.no_grad():
                rows.append(_rows(model(pixel_values=pixels).last_hidden_state[:, 0]))
        return _normalised(rows)

    def provenance(self) -> dict[str, dict[str, str | None]]:
        """Which models scored (loads them if they are not loaded yet)."""
        return {"clip": self._clip_parts()[3].to_dict(), "dino": self._dino_parts()[2].to_dict()}

    # --- loading
    def _clip_parts(self) -> tuple[Any, Any, Any, Provenance]:
        if self._clip is None:
            self._clip = _load_clip(self)
        return self._clip

    def _dino_parts(self) -> tuple[Any, Any, Provenance]:
        if self._dino is None:
            self._dino = _load_dino(self)
        return self._dino


_LAST: list[FeatureModels] = []


def feature_models(
    clip_model: str = DEFAULT_CLIP_MODEL,
    dino_model: str = DEFAULT_DINO_MODEL,
    *,
    device: str = "cpu",
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
) -> FeatureModels:
    """The feature models of these specs on `device`: the set asked for last if it is the
    same, else a new set (each model loads on its first use; the previous set is dropped)."""
    wanted = FeatureModels(
        clip_model,
        dino_model,
        str(device),
        local_files_only,
        None if cache_dir is None else str(cache_dir),
    )
    key = _key(wanted)
    if _LAST and _key(_LAST[0]) == key:
        return _LAST[0]
    _LAST[:] = [wanted]
    return wanted


def feature_model_folder(
    spec: str, field: str, *, local_files_only: bool = False, cache_dir: str | Path | None = None
) -> tuple[Path | None, Provenance]:
    """Where a feature model's files are, fetched into the Hugging Face cache first for a hub
    id that is not there yet (unless downloads are off); None for `tiny`, which is built in
    code. Nothing is loaded: a deployment fills its model cache with this (torch-free)."""
    check_feature_spec(spec, field)
    if spec.strip() == TINY_FEATURES:
        return None, Provenance(TINY_FEATURES, TINY_FEATURES, None)
    where = FeatureModels(
        local_files_only=local_files_only,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
    return _folder(spec, where, field)


def _key(models: FeatureModels) -> tuple[Any, ...]:
    return (
        models.clip_model,
        models.dino_model,
        models.device,
        models.local_files_only,
        models.cache_dir,
    )


def build_tiny_clip(seed: int = 0) -> tuple[Any, Any, Any]:
    """A seeded random CLIPModel at toy size with the `tiny` tokenizer and a 32 px processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tokenizer = tiny_tokenizer()
    text = dict(
        _TINY_TEXT,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = CLIPConfig(text_config=text, vision_config=dict(_TINY_VISION), projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    size = _TINY_VISION["image_size"]
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    return model.eval(), tokenizer, processor


def build_tiny_dino(seed: int = 0) -> tuple[Any, Any]:
    """A seeded random ViT (DINO's architecture: class token, no pooler) at toy size."""
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    config = ViTConfig(**_TINY_VISION, qkv_bias=True, layer_norm_eps=1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = ViTModel(config, add_pooling_layer=False)
    size = _TINY_VISION["image_size"]
    mean = tuple(c / 255 for c in IMAGENET_MEAN_RGB)
    processor = ViTImageProcessorPil(
        size={"height": size, "width": size}, image_mean=mean, image_std=_IMAGENET_STD
    )
    return model.eval(), processor


def _load_clip(models: FeatureModels) -> tuple[Any, Any, Any, Provenance]:
    spec = models.clip_model
    if spec.strip() == TINY_FEATURES:
        model, tokenizer, processor = build_tiny_clip()
        source = Provenance(TINY_FEATURES, TINY_FEATURES, None)
    else:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        folder, source = _folder(spec, models, "clip_model")
        model, tokenizer, processor = _from_folder(
            folder,
            "clip_model",
            lambda: CLIPModel.from_pretrained(folder, local_files_only=True),
            lambda: AutoTokenizer.from_pretrained(folder, local_files_only=True),
            lambda: AutoImageProcessor.from_pretrained(
                folder, local_files_only=True, backend="pil"
            ),
        )
    _place(model, models.device)
    logger.info("Loaded CLIP %s (revision %s)", source.model_id, source.revision)
    return model, tokenizer, processor, source


def _load_dino(models: FeatureModels) -> tuple[Any, Any, Provenance]:
    spec = models.dino_model
    if spec.strip() == TINY_FEATURES:
        model, processor = build_tiny_dino()
        source = Provenance(TINY_FEATURES, TINY_FEATURES, None)
    else:
        from transformers import AutoImageProcessor, AutoModel

        folder, source = _folder(spec, models, "dino_model")
        model, processor = _from_folder(
            folder,
            "dino_model",
            lambda: AutoModel.from_pretrained(folder, local_files_only=True),
            lambda: AutoImageProcessor.from_pretrained(
                folder, local_files_only=True, backend="pil"
            ),
        )
    _place(model, models.device)
    logger.info("Loaded DINO %s (revision %s)", source.model_id, source.revision)
    return model, processor, source


def _from_folder(folder: Path, name: str, *loaders: Any) -> Any:
    """Each loader's result, or ModelLoadError naming the field and the folder."""
    try:
        return tuple(load() for load in loaders)
    except Exception as exc:  # loaders raise many unrelated types for one broken folder
        raise ModelLoadError(
            f"Feature model folder {folder} ({name}) could not be loaded "
            f"({type(exc).__name__}: {first_line(exc)}).",
            field=name,
            fix=FEATURES_FIX,
        ) from exc


def _folder(spec: str, models: FeatureModels, name: str) -> tuple[Path, Provenance]:
    """The local folder of a spec (a folder, or a hub snapshot) and where it came from."""
    text = spec.strip()
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve(), Provenance(spec, str(path.resolve()), None)
    repo, at, revision = text.partition("@")
    if not (at and _HUB_REPO.fullmatch(repo)):
        raise ModelLoadError(
            f"Feature model '{text}' ({name}) is neither '{TINY_FEATURES}', a local folder, nor "
            "a hub id pinned to a commit (owner/name@<40-hex commit>).",
            field=name,
            fix=FEATURES_FIX,
        )
    snapshot = _hub_snapshot(repo, revision, models, name)
    return snapshot, Provenance(spec, repo, revision)


def _hub_snapshot(repo: str, revision: str, models: FeatureModels, name: str) -> Path:
    """The cached snapshot of repo@revision, fetched first unless downloads are off."""
    from huggingface_hub import constants, snapshot_download

    cache = models.cache_dir
    try:
        cached = Path(
            snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True)
        )
        if (cached / "config.json").is_file() and _weights(p.name for p in cached.iterdir()):
            return cached
    except Exception:  # not cached (LocalEntryNotFoundError) or an unreadable cache entry
        pass
    where = f"{repo}@{revision} ({name}; cache {cache or constants.HF_HUB_CACHE})"
    if models.local_files_only or constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"Feature model {where} is not in the local cache, and downloads are off.",
            field=name,
            fix=FEATURES_FIX,
        )
    try:
        return _download(repo, revision, cache)
    except Exception as exc:  # the hub client raises transport, HTTP and cache errors alike
        raise ModelLoadError(
            f"Feature model {where} is not cached and could not be fetched "
            f"({type(exc).__name__}: {first_line(exc)}).",
            field=name,
            fix=FEATURES_FIX,
        ) from exc


def _download(repo: str, revision: str, cache: str | None) -> Path:
    """Fetch the top-level configs, vocabularies and one weight format of repo@revision."""
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi().model_info(repo, revision=revision, timeout=_HUB_PROBE_TIMEOUT_S)
    names = [s.rfilename for s in info.siblings or [] if "/" not in s.rfilename]
    files = [n for n in names if n.endswith((".json", ".txt"))] + _weights(names)
    logger.info("Downloading %d files of %s@%s", len(files), repo, revision)
    return Path(snapshot_download(repo, revision=revision, cache_dir=cache, allow_patterns=files))


def _weights(names: Any) -> list[str]:
    """The weight files to read: model.safetensors if there, else pytorch_model.bin."""
    present = set(names)
    for candidate in ("model.safetensors", "pytorch_model.bin"):
        if candidate in present:
            return [candidate]
    return []


def _place(model: torch.nn.Module, device: str) -> None:
    model.to(device)
    model.eval()
    model.requires_grad_(False)


def _pixels(processor: Any, images: Sequence[Image.Image], model: Any) -> torch.Tensor:
    rgb = [im.convert("RGB") for im in images]
    pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
    return pixels.to(device=model.device, dtype=model.dtype)


def _rows(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy().astype(np.float64)


def _normalised(rows: list[np.ndarray]) -> np.ndarray:
    out = np.concatenate(rows) if rows else np.zeros((0, 0))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)
