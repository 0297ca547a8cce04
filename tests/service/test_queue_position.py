"""A queued job's place in its queue and its estimated start: in the job body, in lists (a
fixed number of queries), in the event stream (a new event when the place changes), and as
the Python client reads it."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update
from sqlalchemy.orm import Session

from api.main import create_app
from core import events, jobs, queueinfo
from core.db import make_engine, make_sessionmaker, session_scope
from core.events import Publisher
from core.models import Job, utcnow
from core.settings import Settings
from mifo_client import models
from tests.helpers.wait import wait_until

from .conftest import bearer
from .factories import LEASE, make_concept, make_job

REDIS = "redis://127.0.0.1:6379/0"


def test_estimate_by_hand() -> None:
    # One worker busy for 30 s more, jobs of 15 s: the third in line starts after 30 + 2 x 15.
    assert queueinfo.estimate(2, [30.0], 15.0) == 60.0
    assert queueinfo.estimate(0, [30.0], None) == 30.0  # the next one needs no mean
    assert queueinfo.estimate(0, [], None) == 0.0  # nothing runs: it is next
    assert queueinfo.estimate(1, [], None) is None  # one before it, no history
    assert queueinfo.estimate(0, [None], 15.0) is None  # a running job of unknown length
    # Two workers (two running jobs), ending in 5 and 20 s; jobs of 10 s.
    assert queueinfo.estimate(0, [20.0, 5.0], 10.0) == 5.0
    assert queueinfo.estimate(1, [20.0, 5.0], 10.0) == 20.0
    assert queueinfo.estimate(2, [20.0, 5.0], 10.0) == 15.0
    assert queueinfo.estimate(3, [20.0, 5.0], 10.0) == 30.0


def _job(
    session: Session, concept: object, kind: str, status: str, at: datetime, **values: object
) -> Job:
    job = make_job(session, concept, kind=kind, status=status)  # type: ignore[arg-type]
    session.execute(update(Job).where(Job.id == job.id).values(created_at=at, **values))
    return job


def test_a_queued_job_shows_its_place_and_estimated_start(
    client: TestClient, session: Session
) -> None:
    now = utcnow()
    at = [now - timedelta(minutes=10 - i) for i in range(10)]
    mine, others = make_concept(session), make_concept(session, tenant="others")
    _job(session, mine, "synthesize", "succeeded", at[0], duration_seconds=10.0)
    _job(session, mine, "synthesize", "succeeded", at[1], duration_seconds=20.0)
    _job(session, mine, "learn", "succeeded", at[2], duration_seconds=1000.0)
    running = _job(session, mine, "synthesize", "running", at[3], eta_seconds=30.0, updated_at=now)
    learn = _job(session, mine, "learn", "queued", at[4])
    _job(session, others, "synthesize", "queued", at[5])  # another tenant's: in the same queue
    _job(session, mine, "synthesize", "queued", at[6])
    third = _job(session, mine, "synthesize", "queued", at[7])
    session.commit()

    body = client.get(f"/v1/jobs/{third.id}").json()
    queue = body["queue"]
    assert (queue["position"], queue["ahead"]) == (3, 3)  # two queued before it, one running
    assert 57.0 <= queue["estimated_start_seconds"] <= 60.0  # 30 s + 2 x the mean of 15 s
    start = datetime.fromisoformat(queue["estimated_start_at"])
    assert abs((start - now).total_seconds() - 60.0) < 4.0
    parsed = models.Job.model_validate(body)  # the Python client reads it
    assert parsed.queue is not None and parsed.queue.position == 3
    assert parsed.queue.estimated_start_at == start

    first = client.get(f"/v1/jobs/{learn.id}").json()["queue"]  # the learn queue is its own
    assert first == {
        "position": 1,
        "ahead": 0,
        "estimated_start_at": first["estimated_start_at"],
        "estimated_start_seconds": 0.0,
    }
    assert client.get(f"/v1/jobs/{running.id}").json()["queue"] is None
    assert models.Job.model_validate(client.get(f"/v1/jobs/{running.id}").json()).queue is None


def test_without_history_the_estimate_is_null(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    make_job(session, concept, kind="synthesize", status="running")  # no ETA, no mean
    queued = make_job(session, concept, kind="synthesize")
    session.commit()
    queue = client.get(f"/v1/jobs/{queued.id}").json()["queue"]
    assert queue == {
        "position": 1,
        "ahead": 1,
        "estimated_start_at": None,
        "estimated_start_seconds": None,
    }


def _queries(client: TestClient, url: str) -> tuple[int, dict]:
    engine = client.app.state.mifo.engine  # type: ignore[attr-defined]
    seen: list[str] = []

    def listener(*args: object, **_: object) -> None:
        statement = str(args[2])
        if "webhook_deliveries" not in statement and "api_keys" not in statement:
            seen.append(statement)  # not the webhook sender's polls, nor the key lookup

    event.listen(engine, "before_cursor_execute", listener)
    try:
        r = client.get(url)
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert r.status_code == 200
    return len(seen), r.json()


def test_a_page_costs_a_fixed_number_of_queries(client: TestClient, session: Session) -> None:
    concept = make_concept(session)

    def add(n: int) -> None:
        for kind in ("learn", "synthesize"):
            for _ in range(n):
                make_job(session, concept, kind=kind)
        session.commit()

    add(2)
    few, page = _queries(client, "/v1/jobs?limit=100")
    add(10)
    many, page = _queries(client, "/v1/jobs?limit=100")
    assert few == many
    oldest_first = sorted(
        (j for j in page["data"] if j["kind"] == "learn"), key=lambda j: j["created_at"]
    )
    assert [j["queue"]["position"] for j in oldest_first] == list(range(1, 13))


def _stream(client: TestClient, job_id: object) -> Iterator[tuple[str, dict]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                yield kind or "", json.loads(line[6:])


def _play(
    settings: Settings,
    steps: Sequence[tuple[Callable[[Session], object], uuid.UUID, bool]],
    seen: list,
) -> threading.Thread:
    """Run each step once the stream has sent the events so far; a step marked False must
    send none, so the next waits a while instead (the stream re-reads meanwhile)."""

    def run() -> None:
        engine = make_engine(settings.db_url)
        sessions = make_sessionmaker(engine)
        publisher = Publisher(settings.events_url)
        expected = 1
        for step, job_id, emits in steps:
            with contextlib.suppress(AssertionError):  # go on: the stream must end to report
                wait_until(lambda n=expected: len(seen) >= n, 10)  # type: ignore[misc]
            time.sleep(0.3)
            with session_scope(sessions) as s:
                step(s)
            publisher.publish(job_id)
            if emits:
                expected += 1
            else:
                time.sleep(1.0)
        engine.dispose()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", ["poll", "redis", "redis-down"])
def test_the_stream_sends_an_event_when_the_place_changes(
    api_key: str, settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    if mode == "redis":
        settings = settings.model_copy(update={"events_url": REDIS})
        monkeypatch.setattr(events, "FALLBACK_SECONDS", 60.0)  # only its own messages wake it
        monkeypatch.setattr("api.events.QUEUED_SECONDS", 0.2)  # ... and the queued re-read
    else:  # redis-down: the stream polls instead of failing
        if mode == "redis-down":
            settings = settings.model_copy(update={"events_url": "redis://127.0.0.1:1/0"})
        monkeypatch.setattr(events, "POLL_SECONDS", 0.05)
    concept = make_concept(session)
    first = make_job(session, concept, kind="synthesize")
    second = make_job(session, concept, kind="synthesize")
    session.commit()
    a, b = first.id, second.id
    steps = [
        (lambda s: jobs.start(s, job_id=a, lease_seconds=LEASE), a, True),
        # Only the estimate changes (the running job's ETA): no event.
        (
            lambda s: jobs.record_progress(
                s, job_id=a, phase="synthesis", step=1, total=4, fraction=0.25, eta_seconds=50.0
            ),
            a,
            False,
        ),
        (lambda s: jobs.finish(s, job_id=a, status="succeeded", result={"images": []}), a, True),
        (lambda s: jobs.start(s, job_id=b, lease_seconds=LEASE), b, True),
        (lambda s: jobs.finish(s, job_id=b, status="succeeded", result={"images": []}), b, True),
    ]
    with TestClient(create_app(settings), headers=bearer(api_key)) as client:
        seen: list[tuple[str, str, tuple[int, int] | None]] = []
        thread = _play(settings, steps, seen)
        for kind, body in _stream(client, b):
            q = body["queue"]
            seen.append((kind, body["status"], (q["position"], q["ahead"]) if q else None))
    thread.join()
    assert seen == [
        ("status", "queued", (2, 1)),
        ("progress", "queued", (1, 1)),  # the first started
        ("progress", "queued", (1, 0)),  # ... and ended
        ("status", "running", None),
        ("status", "succeeded", None),
    ]
