"""Where a base model comes from: spec parsing, local diffusers directories, hub snapshots.

No torch here: `check_base_model` and the HTTP front end's tokenizer use this alone.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ModelLoadError

logger = logging.getLogger(__name__)

TINY = "tiny"
SD21_RANDOM = "sd21-random"
BUILTIN_SPECS = (TINY, SD21_RANDOM)
COMPONENTS = ("unet", "text_encoder", "vae")
# One metadata request with a short timeout decides reachability: the hub client's own
# downloads retry an unreachable host for about 25 s before giving up.
_HUB_PROBE_TIMEOUT_S = 10.0
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
FIX = (
    "point the base model (`--model` of mifo learn / synthesize; `--base-model` of mifo serve, "
    "or MIFO_BASE_MODEL, for the service) at a local diffusers directory (model_index.json with "
    "unet/, text_encoder/, vae/, tokenizer/ and scheduler/ subfolders), or fill the Hugging Face "
    "cache on a machine that can reach the hub"
)

UNSUPPORTED_FIX = (
    "use a Stable Diffusion 1.x or 2.x model (one CLIP text encoder, a UNet2DConditionModel "
    "with cross-attention in its up blocks, epsilon or v prediction)"
)


@dataclass(frozen=True)
class Source:
    """A parsed base model spec: a built-in, a local directory, or a hub id at a revision."""

    kind: Literal["tiny", "sd21-random", "local", "hub"]
    model_id: str
    revision: str | None = None
    path: Path | None = None


def parse_spec(spec: str) -> Source:
    """Read a spec (tiny, sd21-random, a directory, owner/name[@revision]) or say what is wrong."""
    text = spec.strip()
    if not text:
        raise ModelLoadError("No base model was given.", field="model", fix=FIX)
    if text in BUILTIN_SPECS:
        return Source(text, text)  # type: ignore[arg-type]
    path = Path(text).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        return Source("local", str(resolved), path=resolved)
    repo, _, revision = text.partition("@")
    looks_like_path = text.startswith(("/", ".", "~")) or "\\" in text or repo.count("/") != 1
    if not looks_like_path and _HUB_ID.fullmatch(repo):
        return Source("hub", repo, revision or None)
    if path.exists():
        raise ModelLoadError(
            f"Base model path {path.resolve()} is a file, not a diffusers directory.",
            field="model",
            fix=FIX,
        )
    if "/" not in text and "\\" not in text:
        raise ModelLoadError(
            f"Unknown base model '{text}': not a built-in ({', '.join(BUILTIN_SPECS)}), not a "
            "local directory, and not a hub id of the form owner/name[@revision].",
            field="model",
            fix=FIX,
        )
    raise ModelLoadError(f"No base model directory at {path.resolve()}.", field="model", fix=FIX)


def model_directory(
    source: Source, *, local_files_only: bool, cache_dir: str | Path | None, full: bool
) -> tuple[Path, str | None]:
    """The local directory of a local or hub source, and the hub commit (None if local)."""
    if source.kind == "local":
        assert source.path is not None
        return source.path, None
    return hub_snapshot(source, local_files_only=local_files_only, cache_dir=cache_dir, full=full)


def hub_snapshot(
    source: Source, *, local_files_only: bool, cache_dir: str | Path | None, full: bool
) -> tuple[Path, str]:
    """A complete local snapshot of a hub model (cache first, then a download) and its commit."""
    from huggingface_hub import constants

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    cached = _cached_snapshot(source, cache, full=full)
    if cached is not None:
        return cached, cached.name
    where = (
        f"hub repository {source.model_id} at revision {source.revision or 'main'} "
        f"(local cache {cache}; no local directory '{source.model_id}' either)"
    )
    if local_files_only or constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"Base model {where} is not in the local cache, and hub downloads are off "
            "(local_files_only / offline mode).",
            field="model",
            fix=FIX,
        )
    try:
        return _download(source, cache, full=full)
    except Exception as exc:  # the hub client raises transport, HTTP and cache errors alike
        raise ModelLoadError(
            f"Base model {where} is not in the local cache and could not be fetched from the "
            f"hub ({type(exc).__name__}: {first_line(exc)}).",
            field="model",
            fix=FIX,
        ) from exc


def _cached_snapshot(source: Source, cache: Path, *, full: bool) -> Path | None:
    """The cached snapshot of `source` if it holds every part the engine loads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        cached = Path(
            snapshot_download(
                source.model_id,
                revision=source.revision,
                cache_dir=cache,
                local_files_only=True,
            )
        )
        if not missing_parts(cached, full=full):
            return cached
        logger.info("Cached snapshot %s is incomplete; fetching the missing files", cached)
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    return None


def _download(source: Source, cache: Path, *, full: bool) -> tuple[Path, str]:
    """Fetch the files the engine loads into the cache: the snapshot and its commit."""
    from huggingface_hub import HfApi, snapshot_download

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
    return snapshot, info.sha or snapshot.name


def _hub_files(names: Iterable[str], *, full: bool) -> list[str]:
    """The repository files the engine loads: configs, one weight format, tokenizer, scheduler."""
    names = list(names)
    wanted = [n for n in names if n.startswith("tokenizer/")]
    if full:
        wanted += [n for n in names if n in ("model_index.json", "scheduler/scheduler_config.json")]
        for component in COMPONENTS:
            folder = [n for n in names if n.startswith(f"{component}/") and n.count("/") == 1]
            wanted += [n for n in folder if n.endswith("/config.json")]
            wanted += _pick_weights(folder)
    return wanted


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for error messages that stay one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


# --- local directories


def _pick_weights(names: Iterable[str]) -> list[str]:
    """The weight files a loader reads: safetensors if any, else .bin; never dtype variants."""
    plain = [n for n in names if n.rsplit("/", 1)[-1].count(".") == 1]
    safetensors = sorted(n for n in plain if n.endswith(".safetensors"))
    return safetensors or sorted(n for n in plain if n.endswith(".bin"))


def missing_parts(directory: Path, *, full: bool) -> list[str]:
    """What a diffusers directory lacks: the tokenizer, and with `full` the other components."""
    tokenizer = directory / "tokenizer"
    missing = []
    has_vocab = (tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()
    if not (has_vocab or (tokenizer / "tokenizer.json").is_file()):
        missing.append("tokenizer/ (vocab.json + merges.txt, or tokenizer.json)")
    if full:
        if not (directory / "scheduler" / "scheduler_config.json").is_file():
            missing.append("scheduler/scheduler_config.json")
        for component in COMPONENTS:
            folder = directory / component
            if not (folder / "config.json").is_file():
                missing.append(f"{component}/config.json")
            names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
            if not _pick_weights(names):
                missing.append(f"{component}/ weights (*.safetensors or *.bin)")
    return missing


def check_directory(directory: Path, *, full: bool) -> dict[str, list[Path]]:
    """The weight files of each component, or ModelLoadError naming what is missing (or, for
    SDXL and later pipelines, what is not supported)."""
    _refuse_second_text_encoder(directory)
    missing = missing_parts(directory, full=full)
    if missing:
        raise ModelLoadError(
            f"Base model directory {directory} is incomplete: missing {', '.join(missing)}.",
            field="model",
            fix=FIX,
        )
    if not full:
        return {}
    return {
        c: [directory / c / n for n in _pick_weights(p.name for p in (directory / c).iterdir())]
        for c in COMPONENTS
    }


def _refuse_second_text_encoder(directory: Path) -> None:
    """ModelLoadError for a pipeline with two or more text encoders (SDXL, SD 3 and later):
    the engine learns tokens in one CLIP text encoder and conditions the UNet on it alone."""
    index = _model_index(directory)
    named = index.get("text_encoder_2") not in (None, [None, None])
    if not (named or (directory / "text_encoder_2").is_dir()):
        return
    raise ModelLoadError(
        f"Base model directory {directory} has a second text encoder (text_encoder_2; "
        f"{index.get('_class_name', 'its pipeline')}): SDXL and later models are not "
        "supported. The engine learns its tokens in one CLIP text encoder and conditions the "
        "UNet on it alone (Stable Diffusion 1.x and 2.x).",
        field="model",
        fix=UNSUPPORTED_FIX,
    )


def _model_index(directory: Path) -> dict[str, object]:
    """The directory's model_index.json; empty when it is missing or unreadable (the
    loader reports what it needs)."""
    try:
        data = json.loads((directory / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
