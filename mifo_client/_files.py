"""The client's work on local files: uploads read into memory before the first try (so a
retry sends the same bytes), downloads written whole (a temporary name, then renamed) so
that no half file is left behind."""

from __future__ import annotations

import contextlib
import errno
import mimetypes
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from mifo_client._core import Part

FileInput = str | os.PathLike[str] | bytes | IO[bytes]


def upload(field: str, value: FileInput, default_name: str) -> Part:
    """A multipart part from a path, bytes or a binary file, read now."""
    if isinstance(value, bytes | bytearray | memoryview):
        name, data = default_name, bytes(value)
    elif isinstance(value, str | os.PathLike):
        path = Path(value)
        name, data = path.name, path.read_bytes()
    else:
        name = Path(str(getattr(value, "name", "") or default_name)).name
        data = value.read()
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return field, (name, data, kind)


def uploads(image: FileInput, masks: Iterable[FileInput]) -> list[Part]:
    """The parts of a learning request: the image, then the masks in order."""
    parts = [upload("image", image, "image")]
    return parts + [upload("masks", m, f"mask{i}") for i, m in enumerate(masks)]


def folder(path: str | Path) -> Path:
    """The folder to save into, made if missing."""
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    return target


def check_free(target: Path, names: Iterable[str]) -> None:
    """FileExistsError naming the first of `names` already in `target` (nothing fetched)."""
    for name in names:
        if (target / name).exists():
            raise FileExistsError(errno.EEXIST, "the file exists", str(target / name))


def _part(path: Path) -> Path:
    """The temporary name a file is written under before it takes its own."""
    return path.with_name(f".{path.name}.part")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` to write into; renamed to `path` once the block ends,
    removed if it fails (Ctrl-C included)."""
    part = _part(path)
    try:
        yield part
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(path)


def save(target: Path, name: str, data: bytes, *, overwrite: bool = True) -> Path:
    """Write the file whole (a temporary name, then renamed), so no half file is left. With
    `overwrite` False an existing file raises FileExistsError and stays as it was."""
    path = target / name
    if overwrite:
        with replacing(path) as part:
            part.write_bytes(data)
        return path
    part = _part(path)
    part.write_bytes(data)
    taken = FileExistsError(errno.EEXIST, "the file exists", str(path))
    try:
        os.link(part, path)  # fails, atomically, if the name is taken meanwhile
    except FileExistsError:
        part.unlink()
        raise taken from None
    except OSError:  # no hard links on this file system: check, then rename
        if path.exists():
            part.unlink()
            raise taken from None
        part.replace(path)
    else:
        part.unlink()
    return path
