"""Jobs accepted but never sent to the broker (the API stopped between commit and send) are
sent later by any API process; sent jobs are never sent twice."""

from __future__ import annotations

import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
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


def _age(session: Session, job: Job, seconds: float = dispatch.GRACE_SECONDS + 5) -> None:
    """As if nothing had touched the job for `seconds`."""
    then = utcnow() - timedelta(seconds=seconds)
    session.execute(update(Job).where(Job.id == job.id).values(created_at=then, updated_at=then))
    session.commit()


def test_a_job_accepted_but_never_sent_is_sent_once(settings: Settings, session: Session) -> None:
    concept = make_concept(session)
    lost = make_job(session, concept, kind="synthesize")  # enqueued_at stays empty
    fresh = make_job(session, concept, kind="learn")  # its request may still be sending it
    sent = make_job(session, concept, kind="learn")
    canceled = make_job(session, concept, kind="synthesize", status="canceled")
    session.commit()
    for job in (lost, sent, canceled):
        _age(session, job)
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


def test_a_failed_or_interrupted_resend_is_tried_again(
    settings: Settings, session: Session
) -> None:
    concept = make_concept(session)
    first, second = make_job(session, concept, kind="learn"), make_job(session, concept)
    session.commit()
    _age(session, first, dispatch.GRACE_SECONDS + 10)
    _age(session, second)
    down = Broker(fail=True)
    assert dispatch.resend_unsent(_state(settings, down)) == 0  # both claimed, none sent
    session.expire_all()
    assert session.get(Job, first.id).enqueued_at is None  # type: ignore[union-attr]
    up = Broker()
    assert dispatch.resend_unsent(_state(settings, up)) == 0  # the claims still hold
    for job in (first, second):  # ... until they lapse (or the claiming process died)
        _age(session, job)
    assert dispatch.resend_unsent(_state(settings, up)) == 2
    assert sorted(args[0] for _, args, _ in up.sent) == sorted([str(first.id), str(second.id)])
    session.expire_all()
    assert all(session.get(Job, j.id).enqueued_at for j in (first, second))  # type: ignore[union-attr]


def test_a_slow_upload_does_not_make_its_job_look_unsent(
    client: TestClient, session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grace period counts from the request's commit, not from the job's creation before
    the inputs were uploaded: a sweep between commit and send must not claim it."""
    import time

    from api.routes import concepts
    from core import jobs
    from tests.helpers.images import encode, make_scene

    served = client.app.state.mifo.storage  # type: ignore[attr-defined]
    put = served.put
    monkeypatch.setattr(served, "put", lambda *a, **k: (time.sleep(0.3), put(*a, **k))[1])
    claimed: list = []
    real_send = concepts.dispatch.send

    def send_after_a_sweep(*args: Any) -> None:
        with make_sessionmaker(make_engine(settings.db_url))() as other:
            claimed.extend(jobs.claim_unsent(other, older_than=0.2))
            other.commit()
        real_send(*args)

    monkeypatch.setattr(concepts.dispatch, "send", send_after_a_sweep)
    image, masks = make_scene()
    files = [("image", ("s.png", encode(image), "image/png"))]
    files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
    assert client.post("/v1/concepts", files=files).status_code == 202
    assert claimed == []


def test_jobs_created_over_http_are_marked_as_sent(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    session.commit()
    body = {"prompt": "<asset0>", "boxes": {"<asset0>": [0.1, 0.1, 0.5, 0.5]}}
    r = client.post(f"/v1/concepts/{concept.id}/syntheses", json=body)
    assert r.status_code == 202, r.text
    session.expire_all()
    job = session.get(Job, uuid.UUID(r.json()["id"]))
    assert job is not None and job.enqueued_at is not None
