"""A ready concept as a zip that plain diffusers loads (mifo_engine.export), built from the
concept's stored folder on request. No torch: the API processes build it."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.orm import Session

from core import engine
from core.models import Concept
from core.problems import Problem, not_found, unavailable
from core.storage import Storage, StorageError

log = logging.getLogger(__name__)


def concept_archive(
    session: Session, storage: Storage, *, concept_id: uuid.UUID, tenant_id: uuid.UUID
) -> Path:
    """The tenant's ready concept as a zip in a temporary file the caller removes (404 for
    another tenant's or no concept, 409 while it is not ready, 503 if storage fails)."""
    concept = session.get(Concept, concept_id)
    if concept is None or concept.tenant_id != tenant_id:
        raise not_found("concept", concept_id)
    if concept.status != "ready" or concept.meta is None:
        raise Problem(
            409,
            "concept_not_ready",
            "Concept not ready",
            f"Concept {concept_id} is {concept.status}; only a ready concept can be exported.",
            field="concept_id",
            status_of_concept=concept.status,
            fix="wait for its learning job to succeed (GET /v1/jobs/{id}), then export it; "
            "a failed concept must be learned again",
        )
    prefix = concept.files_prefix
    session.rollback()  # the row is read: no transaction stays open while the files are
    fd, name = tempfile.mkstemp(prefix=f"concept-{concept_id}-", suffix=".zip")
    os.close(fd)
    archive = Path(name)
    try:
        with _concept_folder(storage, prefix) as folder:
            engine.export_archive(str(folder), str(archive))
    except StorageError as exc:
        archive.unlink(missing_ok=True)
        raise unavailable("storage", exc) from exc
    except engine.MifoError as exc:
        archive.unlink(missing_ok=True)
        log.error("stored concept %s cannot be exported: %s", concept_id, exc)
        raise Problem(
            500,
            "concept_unreadable",
            "Stored concept unreadable",
            f"The stored files of concept {concept_id} cannot be exported: {exc.message}",
            fix="learn the concept again",
        ) from exc
    except BaseException:
        archive.unlink(missing_ok=True)
        raise
    return archive


@contextlib.contextmanager
def _concept_folder(storage: Storage, prefix: str) -> Iterator[Path]:
    """The concept's folder: the stored one itself with local storage, else a download."""
    local = storage.local_path(prefix.rstrip("/"))
    if local is not None and local.is_dir():
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="mifo-concept-") as tmp:
        for key in storage.keys(prefix):
            path = Path(tmp) / key[len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(storage.get(key))
        yield Path(tmp)
