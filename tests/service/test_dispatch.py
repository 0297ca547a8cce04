"""Jobs accepted but never sent to the broker (the API stopped between commit and send) are
sent later by any API process; sent jobs are never sent twice."""

from __future__ import annotations

import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from api import dispatch
from core.db import make_engine, make_sessionmaker
from core.models import Job, utcnow
from core.settings import Settings

from .factories import make_concept, make_job


class Broker:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, list[str], str]] = []
        self.fail = fail

    def send_task(self, name: str, *, args: list[str], queue: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((name, args, queue))


def _state(settings: Settings, broker: Broker) -> Any:
    return SimpleNamespace(sessions=make_sessionmaker(make_engine(settings.db_url)), celery=broker)


def _age(session: Session, job: Job, seconds: float) -> None:
    session.execute(
        update(Job).where(Job.id == job.id).values(created_at=utcnow() - timedelta(seconds=seconds))
    )
    session.commit()


def test_a_job_accepted_but_never_sent_is_sent_once(settings: Settings, session: Session) -> None:
    concept = make_concept(session)
    lost = make_job(session, concept, kind="synthesize")  # enqueued_at stays empty
    fresh = make_job(session, concept, kind="learn")  # its request may still be sending it
    sent = make_job(session, concept, kind="learn")
    canceled = make_job(session, concept, kind="synthesize", status="canceled")
    session.commit()
    for job in (lost, sent, canceled):
        _age(session, job, dispatch.GRACE_SECONDS + 5)
    session.execute(update(Job).where(Job.id == sent.id).values(enqueued_at=utcnow()))
    session.commit()

    broker = Broker()
    state = _state(settings, broker)
    assert dispatch.resend_unsent(state) == 1
    assert broker.sent == [("mifo.synthesize", [str(lost.id)], "synthesize")]
    assert dispatch.resend_unsent(state) == 0  # claimed: never sent twice
    assert len(broker.sent) == 1
    session.expire_all()
    assert session.get(Job, lost.id).enqueued_at is not None  # type: ignore[union-attr]
    assert session.get(Job, fresh.id).enqueued_at is None  # type: ignore[union-attr]


def test_a_failed_resend_is_tried_again(settings: Settings, session: Session) -> None:
    concept = make_concept(session)
    lost = make_job(session, concept, kind="learn")
    session.commit()
    _age(session, lost, dispatch.GRACE_SECONDS + 5)
    down = Broker(fail=True)
    assert dispatch.resend_unsent(_state(settings, down)) == 0
    session.expire_all()
    assert session.get(Job, lost.id).enqueued_at is None  # type: ignore[union-attr]
    up = Broker()
    assert dispatch.resend_unsent(_state(settings, up)) == 1
    assert up.sent == [("mifo.learn", [str(lost.id)], "learn")]


def test_jobs_created_over_http_are_marked_as_sent(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    session.commit()
    body = {"prompt": "<asset0>", "boxes": {"<asset0>": [0.1, 0.1, 0.5, 0.5]}}
    r = client.post(f"/v1/concepts/{concept.id}/syntheses", json=body)
    assert r.status_code == 202, r.text
    session.expire_all()
    job = session.get(Job, uuid.UUID(r.json()["id"]))
    assert job is not None and job.enqueued_at is not None
