"""The reconciler (core.reconcile) against real databases: jobs whose message never left,
whose message the broker lost, and whose worker was lost (a lapsed lease) all end up
running again or ended with a reason; a job is never sent twice by one pass."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from core import jobs
from core.db import make_engine, make_sessionmaker
from core.models import Job, utcnow
from core.reconcile import GRACE_SECONDS, reconcile, resend_unsent
from core.settings import Settings
from core.storage import storage_from_settings
from tests.helpers.factories import LEASE, Doorbell, make_concept, make_job


def _sessions(settings: Settings) -> Any:
    return make_sessionmaker(make_engine(settings.db_url))


def _age(session: Session, job: Job, seconds: float = GRACE_SECONDS + 5, **extra: Any) -> None:
    """As if nothing had touched the job for `seconds`."""
    then = utcnow() - timedelta(seconds=seconds)
    values = {"created_at": then, "updated_at": then, **extra}
    session.execute(update(Job).where(Job.id == job.id).values(**values))
    session.commit()


def _get(session: Session, job_id: uuid.UUID) -> Job:
    session.expire_all()
    job = session.get(Job, job_id)
    assert job is not None
    return job


def test_a_job_accepted_but_never_sent_is_sent_once(settings: Settings, session: Session) -> None:
    concept = make_concept(session)
    lost = make_job(session, concept, kind="synthesize")  # enqueued_at stays empty
    fresh = make_job(session, concept, kind="learn")  # its request may still be sending it
    sent = make_job(session, concept, kind="learn")
    canceled = make_job(session, concept, kind="synthesize", status="canceled")
    session.commit()
    for job in (lost, sent, canceled):
        _age(session, job)
    _age(session, sent, enqueued_at=utcnow())

    broker = Doorbell(waiting=None)
    assert resend_unsent(_sessions(settings), broker) == 1
    assert broker.sent == [(lost.id, "synthesize")]
    assert resend_unsent(_sessions(settings), broker) == 0  # marked as sent: never twice
    assert len(broker.sent) == 1
    assert _get(session, lost.id).enqueued_at is not None
    assert _get(session, fresh.id).enqueued_at is None


def test_a_failed_or_interrupted_send_is_tried_again(settings: Settings, session: Session) -> None:
    concept = make_concept(session)
    first, second = make_job(session, concept, kind="learn"), make_job(session, concept)
    session.commit()
    _age(session, first, GRACE_SECONDS + 10)
    _age(session, second)
    assert resend_unsent(_sessions(settings), Doorbell(fail=True)) == 0  # claimed, none sent
    assert _get(session, first.id).enqueued_at is None
    up = Doorbell()
    assert resend_unsent(_sessions(settings), up) == 0  # the claims still hold
    for job in (first, second):  # ... until they lapse (or the claiming process died)
        _age(session, job)
    assert resend_unsent(_sessions(settings), up) == 2
    assert sorted(job_id for job_id, _ in up.sent) == sorted([first.id, second.id])
    assert all(_get(session, j.id).enqueued_at for j in (first, second))


def test_a_slow_upload_does_not_make_its_job_look_unsent(
    client: TestClient, session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grace period counts from the request's commit, not from the job's creation before
    the inputs were uploaded: a pass between commit and send must not claim it."""
    import time

    from tests.helpers.images import encode, make_scene

    served = client.app.state.mifo.storage  # type: ignore[attr-defined]
    put = served.put
    slow = [0.3]  # one slow put is enough: the upload outlasts the 0.2 s grace below

    def slow_put(*a: Any, **k: Any) -> None:
        time.sleep(slow.pop() if slow else 0)
        put(*a, **k)

    monkeypatch.setattr(served, "put", slow_put)
    claimed: list = []
    broker = client.app.state.mifo.broker  # type: ignore[attr-defined]
    real_send = broker.send

    def send_after_a_pass(*args: Any) -> None:
        with _sessions(settings)() as other:
            claimed.extend(jobs.claim_unsent(other, older_than=0.2))
            other.commit()
        real_send(*args)

    monkeypatch.setattr(broker, "send", send_after_a_pass)
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
    job = _get(session, uuid.UUID(r.json()["id"]))
    assert job.enqueued_at is not None


def test_messages_lost_with_the_broker_are_sent_again(settings: Settings, session: Session) -> None:
    """A broker restarted without persistence holds none of the messages of queued jobs."""
    concept = make_concept(session)
    queued = [make_job(session, concept, kind="synthesize") for _ in range(3)]
    just_sent = make_job(session, concept, kind="synthesize")
    session.commit()
    for job in queued:
        _age(session, job, enqueued_at=utcnow() - timedelta(seconds=GRACE_SECONDS + 5))
    _age(session, just_sent, enqueued_at=utcnow())  # its message may still be on its way
    storage = storage_from_settings(settings)

    holding = Doorbell(waiting=3)  # the broker still holds the three: nothing to do
    assert reconcile(_sessions(settings), storage, settings, holding)["lost_resent"] == 0
    assert holding.sent == []

    emptied = Doorbell(waiting=0)
    assert reconcile(_sessions(settings), storage, settings, emptied)["lost_resent"] == 3
    assert sorted(job_id for job_id, _ in emptied.sent) == sorted(j.id for j in queued)
    # Re-sent jobs count as just sent: the next pass leaves them alone.
    assert reconcile(_sessions(settings), storage, settings, emptied)["lost_resent"] == 0
    assert len(emptied.sent) == 3

    down = Doorbell(waiting=None)  # a broker that does not answer: nothing is re-sent
    for job in queued:
        _age(session, job, enqueued_at=utcnow() - timedelta(seconds=GRACE_SECONDS + 5))
    assert reconcile(_sessions(settings), storage, settings, down)["lost_resent"] == 0


def test_a_lapsed_lease_is_queued_again_and_sent(settings: Settings, session: Session) -> None:
    concept = make_concept(session)
    lost, alive = make_job(session, concept), make_job(session, concept)
    session.commit()
    for job in (lost, alive):
        jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    jobs.record_progress(
        session, job_id=lost.id, phase="phase1", step=3, total=9, fraction=0.3, eta_seconds=5
    )
    session.execute(update(Job).where(Job.id == lost.id).values(lease_expires_at=utcnow()))
    session.commit()

    broker = Doorbell()
    done = reconcile(_sessions(settings), storage_from_settings(settings), settings, broker)
    assert done["requeued"] == 1 and broker.sent == [(lost.id, "learn")]
    job = _get(session, lost.id)
    assert job.status == "queued" and job.losses == 1 and job.attempts == 1
    assert job.lease_expires_at is None and job.step is None and job.enqueued_at is not None
    assert _get(session, alive.id).status == "running"  # its worker renews its lease

    # The next run is attempt 2: the first attempt's writes are fenced out.
    assert jobs.start(session, job_id=lost.id, lease_seconds=LEASE).attempts == 2  # type: ignore[union-attr]
    assert not jobs.finish(session, job_id=lost.id, status="succeeded", attempt=1)


def test_a_renewed_lease_keeps_the_job(settings: Settings, session: Session) -> None:
    concept = make_concept(session)
    job = make_job(session, concept)
    session.commit()
    jobs.start(session, job_id=job.id, lease_seconds=0.001)
    lease = jobs.renew(session, job_id=job.id, attempt=1, lease_seconds=LEASE)
    session.commit()
    assert lease.owned and not lease.cancel_requested
    assert (
        reconcile(_sessions(settings), storage_from_settings(settings), settings, Doorbell())[
            "requeued"
        ]
        == 0
    )
    assert not jobs.renew(session, job_id=job.id, attempt=2, lease_seconds=LEASE).owned


def test_cancel_of_a_job_whose_worker_is_gone_ends_it_at_once(
    client: TestClient, session: Session, settings: Settings
) -> None:
    concept = make_concept(session, status="pending")
    job = make_job(session, concept)
    session.commit()
    jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    session.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=utcnow()))
    session.commit()
    storage = client.app.state.mifo.storage  # type: ignore[attr-defined]
    storage.put(f"{concept.prefix}concept/attempt-1/half.bin", b"x")
    r = client.post(f"/v1/jobs/{job.id}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "canceled", r.text
    assert client.get(f"/v1/concepts/{concept.id}").json()["status"] == "canceled"
    assert storage.keys(f"{concept.prefix}concept/") == []
