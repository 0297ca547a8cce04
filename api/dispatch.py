"""Sending a newly accepted job to the broker.

A job row is committed before its message is sent, so a worker never receives a job it
cannot read yet. Should the API stop between the two, the job stays queued without
`enqueued_at`, and the reconciler (core.reconcile) sends it; should a message ever go out
twice, only one copy starts the job (core.jobs.start).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core import jobs

log = logging.getLogger(__name__)


def send(state: Any, session: Session, job_id: uuid.UUID, kind: str) -> None:
    """Send the job's message (raising what the broker raised), then record that it went."""
    state.broker.send(job_id, kind)
    try:
        jobs.mark_enqueued(session, job_id)
        session.commit()
    except SQLAlchemyError as exc:  # sent all the same; the reconciler may send it once more
        session.rollback()
        log.warning("job %s was sent but not marked as sent: %s", job_id, exc)
