"""Weight hashes: what a concept records of the base model it was learned on."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_SHA256_NAME = re.compile(r"[0-9a-f]{64}")
_FILE_HASHES: dict[tuple[str, int, int], str] = {}
_FILE_HASH_LOCK = threading.Lock()


def state_dict_sha256(modules: Mapping[str, torch.nn.Module]) -> str:
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


def file_sha256(path: Path) -> str:
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


def files_sha256(weights: Mapping[str, list[Path]]) -> str:
    """sha256 over the component-relative names and sha256s of the weight files loaded."""
    digest = hashlib.sha256()
    for component in sorted(weights):
        for path in sorted(weights[component]):
            digest.update(f"{component}/{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()
