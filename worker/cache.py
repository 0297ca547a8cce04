"""Concepts loaded in this worker process, least recently used evicted first."""

from __future__ import annotations

import tempfile
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from core import engine
from core.storage import Storage


class ConceptCache:
    """Downloads a concept's files once and keeps the loaded object (and its folder) around."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[uuid.UUID, tuple[Any, tempfile.TemporaryDirectory[str]]] = (
            OrderedDict()
        )

    def get(self, concept_id: uuid.UUID, storage: Storage, prefix: str) -> Any:
        if concept_id in self._items:
            self._items.move_to_end(concept_id)
            return self._items[concept_id][0]
        folder = tempfile.TemporaryDirectory(prefix="mifo-concept-")
        for key in storage.keys(prefix):
            path = Path(folder.name) / key[len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(storage.get(key))
        try:
            concept = engine.load_concept(folder.name)
        except BaseException:
            folder.cleanup()
            raise
        self._items[concept_id] = (concept, folder)
        while len(self._items) > self.size:
            _, (_, old) = self._items.popitem(last=False)
            old.cleanup()
        return concept

    def drop(self, concept_id: uuid.UUID) -> None:
        item = self._items.pop(concept_id, None)
        if item is not None:
            item[1].cleanup()
