"""Idempotency-Key on every POST: replay, mismatch, expiry, per-tenant scope."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.main import create_app
from core.models import Concept, IdempotencyKey, Job
from core.retention import expire_idempotency_keys
from core.settings import Settings
from tests.helpers.db import bearer, new_key
from tests.helpers.factories import make_concept, make_job, scene

BOX = {"<asset0>": [0.1, 0.1, 0.5, 0.5]}


@pytest.fixture
def db_url(postgres_url: str) -> str:
    return postgres_url


def _count(session: Session, model: type) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model)) or 0


def _concept(client: TestClient, key: str, names: str = "a, b"):  # type: ignore[no-untyped-def]
    image, masks = scene()
    files = [("image", ("s.png", image, "image/png"))]
    files += [("masks", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    return client.post(
        "/v1/concepts", files=files, data={"names": names}, headers={"Idempotency-Key": key}
    )


def test_concept_post_replays_and_refuses_another_body(
    client: TestClient, session: Session
) -> None:
    first = _concept(client, "k-1")
    again = _concept(client, "k-1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert _count(session, Concept) == 1 and _count(session, Job) == 1
    other = _concept(client, "k-1", names="c, d")
    assert other.status_code == 422 and other.json()["field"] == "Idempotency-Key"
    assert _count(session, Concept) == 1
    assert _concept(client, "k-2").json()["job"]["id"] != first.json()["job"]["id"]


def test_synthesis_and_cancel_replay(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    session.commit()
    url = f"/v1/concepts/{concept.id}/syntheses"
    body = {"prompt": "<asset0>", "boxes": BOX}
    h = {"Idempotency-Key": "s-1"}
    first = client.post(url, json=body, headers=h)
    assert client.post(url, json=body, headers=h).json() == first.json()
    assert _count(session, Job) == 1
    r = client.post(url, json={**body, "seed": 3}, headers=h)
    assert r.status_code == 422 and r.json()["type"].endswith("idempotency_key_reused")
    job = first.json()["id"]
    c1 = client.post(f"/v1/jobs/{job}/cancel", headers={"Idempotency-Key": "c-1"})
    c2 = client.post(f"/v1/jobs/{job}/cancel", headers={"Idempotency-Key": "c-1"})
    assert c1.status_code == c2.status_code == 202 and c1.json() == c2.json()
    # The same key on another path is another request.
    assert client.post(url, json=body, headers={"Idempotency-Key": "c-1"}).status_code == 422


def test_failed_requests_release_their_key(client: TestClient, session: Session) -> None:
    concept = make_concept(session, status="pending")
    session.commit()
    url = f"/v1/concepts/{concept.id}/syntheses"
    h = {"Idempotency-Key": "f-1"}
    assert client.post(url, json={"prompt": "<asset0>", "boxes": BOX}, headers=h).status_code == 409
    assert _count(session, IdempotencyKey) == 0


def _lifetime_passes(session: Session, key: str) -> None:
    """The stored key's times move back by its lifetime, as if that long had been waited."""
    session.expire_all()
    row = session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == key)).one()
    lifetime = row.expires_at - row.created_at
    assert timedelta(seconds=0.9) < lifetime <= timedelta(seconds=1)  # idempotency_seconds
    row.created_at -= lifetime
    row.expires_at -= lifetime
    session.commit()


def test_keys_are_per_tenant_and_expire(settings: Settings, session: Session, api_key: str) -> None:
    s = settings.model_copy(update={"idempotency_seconds": 1})
    concept = make_concept(session)
    job = make_job(session, concept, kind="synthesize")
    session.commit()
    other = bearer(new_key(settings, "other"))
    path = f"/v1/jobs/{job.id}/cancel"
    with TestClient(create_app(s), headers=bearer(api_key)) as c:
        assert c.post(path, headers={"Idempotency-Key": "e-1"}).status_code == 202
        # Another tenant's identical key is not a replay: their request is judged on its own.
        r = c.post(path, headers={**other, "Idempotency-Key": "e-1"})
        assert r.status_code == 404
        _lifetime_passes(session, "e-1")
        assert expire_idempotency_keys(session) == 1
        assert c.post(path, headers={"Idempotency-Key": "e-1"}).status_code == 202
        _lifetime_passes(session, "e-1")
        # An expired key that is still stored is ignored too.
        assert c.post(path, headers={"Idempotency-Key": "e-1"}).status_code == 202


def test_an_abandoned_claim_is_taken_over_by_one_retry_only(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent retries of a request whose process died after claiming its key: one job."""
    import threading
    from datetime import timedelta

    from sqlalchemy import delete, update

    from api.http import idempotency
    from core.models import utcnow

    concept = make_concept(session)
    session.commit()
    url = f"/v1/concepts/{concept.id}/syntheses"
    body = {"prompt": "<asset0>", "boxes": BOX}
    h = {"Idempotency-Key": "crashed"}
    assert client.post(url, json=body, headers=h).status_code == 202
    # What a process killed between its claim and its job leaves behind: a claim, no job.
    session.execute(delete(Job))
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.key == "crashed")
        .values(
            job_id=None,
            status_code=None,
            response=None,
            created_at=utcnow() - timedelta(seconds=120),
        )
    )
    session.commit()
    assert _count(session, Job) == 0

    n = 8
    barrier, read = threading.Barrier(n), threading.Barrier(n, timeout=20)
    answers: list[tuple[int, dict]] = []
    waiting = iter(range(n))

    def after_reading_the_claim() -> Any:
        if next(waiting, None) is not None:  # every retry has read the stale claim
            read.wait()
        return utcnow()

    monkeypatch.setattr(idempotency, "utcnow", after_reading_the_claim)

    def retry() -> None:
        barrier.wait()
        r = client.post(url, json=body, headers=h)
        answers.append((r.status_code, r.json()))

    threads = [threading.Thread(target=retry) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _count(session, Job) == 1
    codes = sorted(code for code, _ in answers)
    assert len(codes) == n and set(codes) <= {202, 409}, answers
    assert len({b["id"] for code, b in answers if code == 202}) == 1
    assert all(b["type"].endswith("idempotency_key_in_use") for code, b in answers if code == 409)
    assert client.post(url, json=body, headers=h).status_code == 202  # now a replay
    assert _count(session, Job) == 1
