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
from tests.helpers.db import bearer
from tests.helpers.factories import LEASE, make_concept, make_job
from tests.helpers.wait import wait_until

REDIS = "redis://127.0.0.1:6379/0"


def test_estimate_by_hand() -> None:
    # One worker busy for 30 s more, jobs of 15 s: the third in line starts after 30 + 2 x 15.
    assert queueinfo.estimate([30.0], [(15.0, 2)]) == 60.0
    assert queueinfo.estimate([30.0], [(None, 0)]) == 30.0  # the next one needs no mean
    assert queueinfo.estimate([], []) == 0.0  # nothing runs: it is next
    assert queueinfo.estimate([], [(None, 1)]) is None  # one before it, no history
    assert queueinfo.estimate([None], [(15.0, 0)]) is None  # a running job of unknown length
    # Two workers (two running jobs), free in 5 and 20 s; jobs of 10 s. The first in line runs
    # from 5 to 15 on the first worker, the second from 15 there, the third from 20 on the
    # other, the fourth from 25: each starts on the worker that frees first.
    ends = [20.0, 5.0]
    assert [queueinfo.estimate(ends, [(10.0, k)]) for k in range(5)] == [5, 15, 20, 25, 30]
    # A long line in whole rounds: 1001 jobs of 10 s on two idle workers, 500 rounds and one.
    assert queueinfo.estimate([0.0, 0.0], [(10.0, 1001)]) == 5000.0


def test_estimate_of_mixed_jobs_by_hand() -> None:
    # Two workers free in 4 and 30 s. A learning job of 100 s takes the first (4 to 104);
    # three syntheses of 10 s then run on the second at 30, 40 and 50: the job starts at 60.
    assert queueinfo.estimate([4.0, 30.0], [(100.0, 1), (10.0, 3)]) == 60.0
    # The syntheses first: 4-14, 14-24, 24-34 on the first; the learning job at 30 on the
    # second (to 130); the job starts at 34.
    assert queueinfo.estimate([4.0, 30.0], [(10.0, 3), (100.0, 1)]) == 34.0
    assert queueinfo.estimate([], [(100.0, 1), (10.0, 2)]) == 120.0  # one idle worker
    assert queueinfo.estimate([4.0, 30.0], [(100.0, 1), (None, 1)]) is None
    assert queueinfo.estimate([4.0, 30.0], [(100.0, 1), (None, 0)]) == 30.0  # none of it ahead


def _job(
    session: Session, concept: object, kind: str, status: str, at: datetime, **values: object
) -> Job:
    job = make_job(session, concept, kind=kind, status=status)  # type: ignore[arg-type]
    session.execute(update(Job).where(Job.id == job.id).values(created_at=at, **values))
    return job


def _client(settings: Settings, api_key: str, pools: str) -> TestClient:
    """A client of an API whose workers are `pools` (Settings.worker_pools)."""
    app = create_app(settings.model_copy(update={"worker_pools": pools}))
    return TestClient(app, headers=bearer(api_key))


def _queue(client: TestClient, job: Job) -> dict:
    return client.get(f"/v1/jobs/{job.id}").json()["queue"]


def test_a_queued_job_shows_its_place_and_estimated_start(
    settings: Settings, api_key: str, session: Session
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

    # Workers of each kind: the other kind's jobs are not ahead.
    with _client(settings, api_key, "per-kind") as client:
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


def test_shared_workers_a_running_learning_job_delays_a_synthesis(
    client: TestClient, settings: Settings, api_key: str, session: Session
) -> None:
    now = utcnow()
    at = [now - timedelta(minutes=10 - i) for i in range(4)]
    concept = make_concept(session)
    _job(session, concept, "synthesize", "succeeded", at[0], duration_seconds=10.0)
    _job(session, concept, "learn", "running", at[1], eta_seconds=300.0, updated_at=now)
    queued = _job(session, concept, "synthesize", "queued", at[2])
    session.commit()

    # The default: the one worker learning is the one the synthesis waits for.
    queue = _queue(client, queued)
    assert (queue["position"], queue["ahead"]) == (1, 1)
    assert 297.0 <= queue["estimated_start_seconds"] <= 300.0  # the learning job's ETA
    with _client(settings, api_key, "per-kind") as per_kind:  # a synthesis worker is idle
        alone = _queue(per_kind, queued)
    assert alone == {
        "position": 1,
        "ahead": 0,
        "estimated_start_at": alone["estimated_start_at"],  # now: read in the same answer
        "estimated_start_seconds": 0.0,
    }


def test_shared_workers_jobs_of_both_kinds_ahead_take_their_own_means(
    client: TestClient, session: Session
) -> None:
    now = utcnow()
    at = [now - timedelta(minutes=10 - i) for i in range(10)]
    mine, others = make_concept(session), make_concept(session, tenant="others")
    _job(session, mine, "learn", "succeeded", at[0], duration_seconds=100.0)
    _job(session, mine, "synthesize", "succeeded", at[1], duration_seconds=10.0)
    _job(session, mine, "synthesize", "succeeded", at[2], duration_seconds=20.0)
    _job(session, mine, "synthesize", "running", at[3], eta_seconds=30.0, updated_at=now)
    learn = _job(session, mine, "learn", "queued", at[4])
    _job(session, mine, "synthesize", "queued", at[5])
    _job(session, others, "synthesize", "queued", at[6])
    second_learn = _job(session, mine, "learn", "queued", at[7])
    synthesis = _job(session, mine, "synthesize", "queued", at[8])
    session.commit()

    # One worker (one running job) free in 30 s; then learning jobs of 100 s, syntheses of 15.
    # It took a synthesis last, so the learning queue has the next turn, then the syntheses'.
    places = {
        job: (q["position"], q["ahead"], q["estimated_start_seconds"])
        for job, q in ((j, _queue(client, j)) for j in (learn, second_learn, synthesis))
    }
    assert places[learn][:2] == (1, 1)  # the running synthesis
    assert 27.0 <= places[learn][2] <= 30.0
    # + a learning job and the synthesis of the first round (not both created before it)
    assert places[second_learn][:2] == (2, 3)
    assert 142.0 <= places[second_learn][2] <= 145.0  # 30 + 100 + 15
    assert places[synthesis][:2] == (3, 5)  # + two syntheses and both learning jobs
    assert 257.0 <= places[synthesis][2] <= 260.0  # 30 + 2 x 100 + 2 x 15


def test_shared_workers_take_the_queues_in_turns_not_by_creation(
    client: TestClient, session: Session
) -> None:
    """A synthesis created after a queued learning job starts before it when the worker's
    last job was a learning job: the broker gives the synthesis queue the next turn."""
    now = utcnow()
    at = [now - timedelta(minutes=10 - i) for i in range(6)]
    concept = make_concept(session)
    _job(session, concept, "learn", "succeeded", at[0], duration_seconds=100.0)
    _job(session, concept, "synthesize", "succeeded", at[1], duration_seconds=10.0)
    running = _job(session, concept, "learn", "running", at[2], eta_seconds=50.0)
    session.execute(update(Job).where(Job.id == running.id).values(started_at=at[2]))
    learn = _job(session, concept, "learn", "queued", at[3])
    synthesis = _job(session, concept, "synthesize", "queued", at[4])
    later = _job(session, concept, "synthesize", "queued", at[5])
    session.commit()

    first = _queue(client, synthesis)
    assert (first["position"], first["ahead"]) == (1, 1)  # only the running learning job
    assert 47.0 <= first["estimated_start_seconds"] <= 50.0
    waits = _queue(client, learn)
    assert (waits["position"], waits["ahead"]) == (1, 2)  # + the synthesis created after it
    assert 57.0 <= waits["estimated_start_seconds"] <= 60.0
    second = _queue(client, later)  # after the learning job's turn
    assert (second["position"], second["ahead"]) == (2, 3)
    assert 157.0 <= second["estimated_start_seconds"] <= 160.0


def test_turns_by_hand() -> None:
    turns = queueinfo._Turns({"learn": 2, "synthesize": 5}, last="learn")
    order = turns.order()  # the registry's kinds, from the one after the last started
    assert order[0] == "synthesize" and order[-1] == "learn" and len(order) == len(set(order))
    assert turns.ahead("learn", 1) == {"learn": 0, "synthesize": 1}
    assert turns.ahead("learn", 2) == {"learn": 1, "synthesize": 2}
    assert turns.ahead("synthesize", 4) == {"learn": 2, "synthesize": 3}  # learning ran out
    idle = queueinfo._Turns({"learn": 1, "synthesize": 1}, last=None)  # in the queues' order
    assert idle.ahead("synthesize", 1) == {"learn": 1, "synthesize": 0}


def test_shared_workers_no_history_of_a_kind_ahead_is_a_null_estimate(
    client: TestClient, session: Session
) -> None:
    now = utcnow()
    at = [now - timedelta(minutes=10 - i) for i in range(3)]
    concept = make_concept(session)
    _job(session, concept, "synthesize", "succeeded", at[0], duration_seconds=10.0)
    learn = _job(session, concept, "learn", "queued", at[1])  # no learning job succeeded yet
    synthesis = _job(session, concept, "synthesize", "queued", at[2])
    session.commit()

    assert _queue(client, synthesis) == {
        "position": 1,
        "ahead": 1,
        "estimated_start_at": None,
        "estimated_start_seconds": None,
    }
    first = _queue(client, learn)  # nothing ahead of it: no mean needed
    assert (first["position"], first["ahead"], first["estimated_start_seconds"]) == (1, 0, 0.0)


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


@pytest.mark.parametrize("pools", ["shared", "per-kind"])
def test_a_page_costs_a_fixed_number_of_queries(
    settings: Settings, api_key: str, session: Session, pools: str
) -> None:
    concept = make_concept(session)
    make_job(session, concept, kind="synthesize", status="running")

    def add(n: int) -> None:
        for kind in ("learn", "synthesize"):
            for _ in range(n):
                make_job(session, concept, kind=kind)
        session.commit()

    with _client(settings, api_key, pools) as client:
        add(2)
        few, page = _queries(client, "/v1/jobs?limit=100")
        add(10)
        many, page = _queries(client, "/v1/jobs?limit=100")
    assert few == many
    queued = sorted((j for j in page["data"] if j["queue"]), key=lambda j: j["created_at"])
    for kind in ("learn", "synthesize"):
        places = [j["queue"]["position"] for j in queued if j["kind"] == kind]
        assert places == list(range(1, 13))
    ahead = [j["queue"]["ahead"] for j in queued]
    if pools == "shared":  # in turns after the running synthesis: learning first in each
        assert ahead == [
            2 * (j["queue"]["position"] - 1) + (j["kind"] == "synthesize") + 1 for j in queued
        ]
    else:
        assert ahead == [j["queue"]["position"] - (j["kind"] == "learn") for j in queued]


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
        monkeypatch.setattr("api.http.events.QUEUED_SECONDS", 0.2)  # ... and the queued re-read
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


def test_a_page_job_that_started_since_the_page_was_read_is_counted_once(
    session: Session,
) -> None:
    """The page says both are queued; the first has started meanwhile: it is the running job
    ahead of the second, not also a queued one before it."""
    now = utcnow()
    concept = make_concept(session)
    first = _job(session, concept, "synthesize", "queued", now - timedelta(seconds=2))
    second = _job(session, concept, "synthesize", "queued", now - timedelta(seconds=1))
    session.commit()
    page = [session.get(Job, first.id), session.get(Job, second.id)]
    assert [j.status for j in page if j is not None] == ["queued", "queued"]
    with Session(session.get_bind()) as other:  # the worker's start, behind the page's back
        other.execute(update(Job).where(Job.id == first.id).values(status="running"))
        other.commit()
    places = queueinfo.spots(session, [j for j in page if j is not None])
    assert (places[second.id].position, places[second.id].ahead) == (1, 1)
    assert (places[first.id].position, places[first.id].ahead) == (1, 0)
