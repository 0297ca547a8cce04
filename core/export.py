"""A ready concept as a zip that plain diffusers loads (mifo_engine.export), built from the
concept's stored folder on request. No torch: the API processes build it.

The archive of a concept is the same bytes on every request (the engine writes it so), and
its ETag is their sha256. The temporary zip is unlinked as soon as it is open: the response
streams the open file, and nothing is left on disk whether the send ends, fails or is
cancelled. At most MAX_BUILDS archives are built at once per process."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import engine, submissions
from core.models import Concept
from core.problems import Problem, not_found, unavailable
from core.storage import Storage, StorageError

log = logging.getLogger(__name__)

MAX_BUILDS = 2  # archives built at once per process: each holds a worker thread and disk
BUSY_RETRY_SECONDS = 10
CHUNK = 1 << 20
_builds = threading.BoundedSemaphore(MAX_BUILDS)


@dataclass
class Archive:
    """A built archive: the open file (already unlinked), its size and its ETag."""

    file: BinaryIO
    size: int
    etag: str  # a strong validator: the quoted sha256 of the bytes

    def chunks(self) -> Iterator[bytes]:
        """The bytes in 1 MiB chunks; the file is closed at the end (or when dropped)."""
        with self.file:
            while chunk := self.file.read(CHUNK):
                yield chunk


def concept_archive(
    session: Session, storage: Storage, *, concept_id: uuid.UUID, tenant_id: uuid.UUID
) -> Archive:
    """The tenant's ready concept as a zip (404 for another tenant's or no concept, also
    one deleted while its archive is built; 409 while it is not ready; 503 if storage fails
    or MAX_BUILDS archives are being built)."""
    concept = submissions.ready_concept(session, concept_id, tenant_id, None, to="export")
    prefix = concept.files_prefix
    session.rollback()  # the row is read: no transaction stays open while the files are
    if not _builds.acquire(blocking=False):
        raise Problem(
            "export_busy",
            f"This server builds at most {MAX_BUILDS} concept archives at a time and all "
            "are busy; nothing was started.",
            fix=f"retry the export after {BUSY_RETRY_SECONDS} seconds (Retry-After)",
            headers={"Retry-After": str(BUSY_RETRY_SECONDS)},
        )
    try:
        return _build(session, storage, concept_id, prefix)
    finally:
        _builds.release()


def _build(session: Session, storage: Storage, concept_id: uuid.UUID, prefix: str) -> Archive:
    fd, name = tempfile.mkstemp(prefix=f"concept-{concept_id}-", suffix=".zip")
    os.close(fd)
    try:
        try:
            with _concept_folder(storage, prefix) as folder:
                engine.export_archive(str(folder), name)
        except (StorageError, engine.MifoError, OSError) as exc:
            problem = _failed(session, concept_id, exc)
            if problem is None:
                raise
            raise problem from exc
        file = open(name, "rb")  # noqa: SIM115 - Archive.chunks closes it
    finally:
        os.unlink(name)  # an open file stays readable; a failed build leaves nothing
    digest = hashlib.file_digest(file, "sha256").hexdigest()
    size = file.tell()
    file.seek(0)
    return Archive(file, size, f'"{digest}"')


def _failed(session: Session, concept_id: uuid.UUID, exc: Exception) -> Problem | None:
    """What a failed build answers: 404 when the concept was deleted meanwhile (its files
    went with it), else the failure as a problem (None: an error of this server, raised)."""
    gone = session.scalar(select(Concept.id).where(Concept.id == concept_id)) is None
    session.rollback()
    if gone:
        return not_found("concept", concept_id)
    if isinstance(exc, StorageError):
        return unavailable("storage", exc)
    if isinstance(exc, engine.MifoError):
        log.error("stored concept %s cannot be exported: %s", concept_id, exc)
        return Problem(
            "concept_unreadable",
            f"The stored files of concept {concept_id} cannot be exported: {exc.message}",
            fix="learn the concept again",
        )
    return None


@contextlib.contextmanager
def _concept_folder(storage: Storage, prefix: str) -> Iterator[Path]:
    """The concept's folder: the stored one itself with local storage, else a download of
    each object straight to a file."""
    local = storage.local_path(prefix.rstrip("/"))
    if local is not None and local.is_dir():
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="mifo-concept-") as tmp:
        for key in storage.keys(prefix):
            path = Path(tmp) / key[len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            storage.download(key, path)
        yield Path(tmp)
