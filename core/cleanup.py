"""Removing stored objects once nothing points at them, and again if that failed.

Rows go first (a concept, a failed job's output), so no response ever names an object that
is gone. When removing the objects then fails (storage unreachable), the prefix is recorded
in `storage_cleanups` and the maintenance task tries again until it succeeds: no object
outlives what it belonged to.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core import clock, jobs
from core.models import StorageCleanup
from core.storage import Storage, StorageError

log = logging.getLogger(__name__)

BATCH = 100
# How long files may stay stored ahead of the commit of the row they belong to: far longer
# than any request takes between storing its inputs and committing.
PENDING_SECONDS = 3600.0


def remove(storage: Storage, sessions: sessionmaker[Session], prefix: str, what: str) -> bool:
    """Delete every object under `prefix`; on a storage error, record it for a later try.
    `what` names the objects in the log. True when they are gone now."""
    try:
        storage.delete_prefix(prefix)
        return True
    except StorageError as exc:
        log.error("could not remove %s under %s, will try again: %s", what, prefix, exc)
        try:
            with sessions() as session:
                defer(session, prefix, str(exc))
        except SQLAlchemyError as db:  # both down: logged, nothing more to do now
            log.error("could not record %s for removal either: %s", prefix, db)
        return False


def defer(session: Session, prefix: str, error: str) -> None:
    """Record `prefix` for the maintenance task (and commit)."""
    if not prefix.endswith("/") or prefix.count("/") < 2:  # never the whole bucket
        raise ValueError(f"not an object folder: {prefix!r}")
    row = session.get(StorageCleanup, prefix)
    if row is None:
        session.add(StorageCleanup(prefix=prefix, last_error=error[:2000]))
    else:
        row.attempts += 1
        row.last_error = error[:2000]
    try:
        session.commit()
    except SQLAlchemyError:  # another process recorded it at the same moment: that will do
        session.rollback()


def remove_superseded(storage: Storage, output: str, *, live: int | None, newest: int) -> int:
    """Delete the attempt folders under a job's `output` that no run will use again (as
    core.jobs.superseded_folders picks them); how many were removed."""
    stale = jobs.superseded_folders(output, storage.keys(output), live=live, newest=newest)
    for folder in stale:
        storage.delete_prefix(folder)
    return len(stale)


def pending(sessions: sessionmaker[Session], prefix: str) -> None:
    """Record `prefix` for removal PENDING_SECONDS from now, committed on its own before any
    file is stored there: a process that dies before committing the row the files belong to
    leaves the record, and the maintenance duty removes the files; the transaction that
    commits the row drops the record (`settle`)."""
    with sessions() as session:
        session.add(
            StorageCleanup(
                prefix=prefix,
                last_error="stored ahead of its row's commit",
                updated_at=clock.after(session, PENDING_SECONDS),
            )
        )
        session.commit()


def settle(session: Session, prefix: str) -> None:
    """The files under `prefix` now belong to a row committed with this transaction."""
    session.execute(delete(StorageCleanup).where(StorageCleanup.prefix == prefix))


def retry(session: Session, storage: Storage) -> int:
    """Try the recorded prefixes that are due again; how many are gone now."""
    done = 0
    for row in session.scalars(
        select(StorageCleanup)
        .where(StorageCleanup.updated_at <= clock.now(session))
        .order_by(StorageCleanup.updated_at)
        .limit(BATCH)
    ).all():
        try:
            storage.delete_prefix(row.prefix)
        except StorageError as exc:
            row.attempts += 1
            row.last_error = str(exc)[:2000]
            row.updated_at = clock.now(session)
            session.commit()
            continue
        session.delete(row)
        session.commit()
        done += 1
    return done
