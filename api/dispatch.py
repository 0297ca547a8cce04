"""Sending jobs to the broker, and again when a message never left.

A job row is committed before its message is sent, so a worker never receives a job it
cannot read yet. An API process that stops between the two (killed, crashed, its host lost)
would leave the job queued forever, and a client retrying with its Idempotency-Key would be
told it was accepted. So every job records when its message was sent (`enqueued_at`), and
each API process, every SWEEP_SECONDS and at start-up, claims the jobs queued without one and
untouched for GRACE_SECONDS, and sends them (core.jobs.claim_unsent). A claim lapses after
GRACE_SECONDS, so a failed send or a process dying mid-sweep only delays a job. Should a
message ever go out twice, the worker's attempt counter lets only one run write anything.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core import jobs
from core.db import session_scope
from worker.app import TASK_LEARN, TASK_SYNTHESIZE

log = logging.getLogger(__name__)

GRACE_SECONDS = 30.0  # far longer than a request takes from its commit to its send
SWEEP_SECONDS = 10.0
TASKS = {"learn": TASK_LEARN, "synthesize": TASK_SYNTHESIZE}  # each kind has its own queue


def _message(state: Any, job_id: uuid.UUID, kind: str) -> None:
    state.celery.send_task(TASKS[kind], args=[str(job_id)], queue=kind)


def send(state: Any, session: Session, job_id: uuid.UUID, kind: str) -> None:
    """Send the job's message (raising what the broker raised), then record that it went."""
    _message(state, job_id, kind)
    try:
        jobs.mark_enqueued(session, job_id)
        session.commit()
    except SQLAlchemyError as exc:  # sent all the same; the sweep may send it once more
        session.rollback()
        log.warning("job %s was sent but not marked as sent: %s", job_id, exc)


def resend_unsent(state: Any) -> int:
    """Send the messages of jobs accepted but never sent; how many were sent."""
    with session_scope(state.sessions) as session:
        claimed = jobs.claim_unsent(session, older_than=GRACE_SECONDS)
    sent = 0
    for job_id, kind in claimed:
        try:
            _message(state, job_id, kind)
        except Exception as exc:  # the broker is down: these claims lapse, a later sweep retries
            log.error("could not send job %s to the broker: %s", job_id, exc)
            return sent
        with session_scope(state.sessions) as session:
            jobs.mark_enqueued(session, job_id)
        sent += 1
        log.warning("job %s was accepted but its message never sent; sent now", job_id)
    return sent
