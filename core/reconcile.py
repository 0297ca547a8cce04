"""The reconciler: makes the broker agree with the job rows, which are the truth.

Every MIFO_RECONCILE_SECONDS, in exactly one place (celery beat's `mifo.reconcile` on the
control queue in production, a thread of `mifo serve` in embedded mode), it

1. re-queues running jobs whose lease lapsed (their worker was killed, crashed or cut off)
   and sends them again; cancels them instead when a cancel was asked, and fails them as
   `worker_lost` once MIFO_MAX_ATTEMPTS runs lost their worker;
2. sends queued jobs whose message never left (the API stopped between its commit and its
   send): unsent and untouched for GRACE_SECONDS;
3. re-sends queued jobs whose message may have been lost with the broker (restarted without
   persistence): when a queue holds fewer messages than it has sent-but-not-started jobs.

A message sent twice is harmless: only a queued job starts (core.jobs.start), so the second
copy finds it running or finished and is skipped. Two reconcilers racing are harmless too:
each change is a conditional UPDATE.
"""

from __future__ import annotations

import logging
import uuid
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from core import cleanup, jobs, kinds
from core.db import session_scope
from core.events import Publisher
from core.settings import Settings
from core.storage import Storage

log = logging.getLogger(__name__)

GRACE_SECONDS = 30.0  # far longer than a request takes from its commit to its send
BATCH = 100


class Sender(Protocol):
    def send(self, job_id: uuid.UUID, kind: str) -> None: ...

    def depth(self, queue: str) -> int | None: ...


def reconcile(
    sessions: sessionmaker[Session], storage: Storage, settings: Settings, broker: Sender
) -> dict[str, int]:
    """One pass; what it did, by kind of repair."""
    done = _lapsed(sessions, storage, settings, broker)
    done["unsent_sent"] = resend_unsent(sessions, broker)
    done["lost_resent"] = _resend_lost(sessions, broker)
    if any(done.values()):
        log.info("reconciled: %s", done)
    return done


def _lapsed(
    sessions: sessionmaker[Session], storage: Storage, settings: Settings, broker: Sender
) -> dict[str, int]:
    with session_scope(sessions) as session:
        handled = jobs.requeue_lapsed(session, max_attempts=settings.max_attempts, limit=BATCH)
    publisher = Publisher(settings.events_url if handled else None)
    counts = {"requeued": 0, "failed": 0, "canceled": 0}
    for lapsed in handled:
        counts[lapsed.outcome] += 1
        publisher.publish(lapsed.job_id)
        if lapsed.outcome == "requeued":
            log.warning("job %s lost its worker (lease lapsed); queued again", lapsed.job_id)
            _send(sessions, broker, lapsed.job_id, lapsed.kind)
        elif lapsed.output:
            cleanup.remove(storage, sessions, lapsed.output, f"the output of job {lapsed.job_id}")
    return counts


def _send(sessions: sessionmaker[Session], broker: Sender, job_id: uuid.UUID, kind: str) -> bool:
    """Ring for a queued job and record it; False when the broker refused (a later pass
    sends it: it stays unsent)."""
    try:
        broker.send(job_id, kind)
    except Exception as exc:
        log.error("could not send job %s to the broker: %s", job_id, exc)
        return False
    with session_scope(sessions) as session:
        jobs.mark_resent(session, job_id)
    return True


def resend_unsent(sessions: sessionmaker[Session], broker: Sender) -> int:
    """Send the messages of jobs accepted (or re-queued) but never sent; how many were sent.

    Each is claimed first (core.jobs.claim_unsent), so two reconcilers never both send it;
    a claim whose send failed lapses by itself."""
    with session_scope(sessions) as session:
        claimed = jobs.claim_unsent(session, older_than=GRACE_SECONDS)
    sent = 0
    for job_id, kind in claimed:
        if not _send(sessions, broker, job_id, kind):
            break  # the broker is down: these claims lapse, a later pass retries
        sent += 1
        log.warning("job %s was accepted but its message never sent; sent now", job_id)
    return sent


def _resend_lost(sessions: sessionmaker[Session], broker: Sender) -> int:
    """Re-send queued jobs whose messages the broker no longer holds (a restart that kept
    nothing). The broker only tells how many messages wait, not which, so when it holds fewer
    than the jobs sent (over GRACE_SECONDS ago) and not yet started, all of those are sent
    again; each is re-sent at most once per GRACE_SECONDS, and copies are skipped."""
    resent = 0
    for kind, queue in ((k.name, k.queue) for k in kinds.ALL):
        with sessions() as session:
            expected = jobs.count_queued_and_sent(session, kind=kind, older_than=GRACE_SECONDS)
            if expected == 0:
                continue
            waiting = broker.depth(queue)
            if waiting is None or waiting >= expected:
                continue
            ids = jobs.queued_and_sent(session, kind=kind, older_than=GRACE_SECONDS, limit=BATCH)
        log.warning(
            "queue %s holds %d messages for %d queued jobs: sending them again",
            queue,
            waiting,
            expected,
        )
        for job_id in ids:
            if not _send(sessions, broker, job_id, kind):
                return resent
            resent += 1
    return resent
