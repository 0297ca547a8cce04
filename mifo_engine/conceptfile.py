"""`concept.json`, the record of a learned concept: its format version and reading it. No
torch here, so that the export (and other torch-free callers) read it as `Concept.load` does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConceptError

FORMAT_VERSION = 1


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """Parse concept.json, refusing a file this version cannot read."""
    path = Path(directory) / "concept.json"
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConceptError(
            f"No readable concept.json in {directory}: {exc}.",
            field="concept",
            fix="pass a directory written by `mifo learn`",
        ) from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConceptError(
            f"Concept format {meta.get('format_version')} is not supported.",
            field="concept",
            fix="learn the concept again with this version",
        )
    return meta
