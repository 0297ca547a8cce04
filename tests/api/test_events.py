"""GET /v1/jobs/{id}/events: Server-Sent Events in polling mode and with Redis pub/sub."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from core import events, jobs
from core.db import make_engine, make_sessionmaker, session_scope
from core.events import Publisher
from core.settings import Settings
from tests.helpers.db import bearer
from tests.helpers.factories import LEASE, make_concept, make_job
from tests.helpers.wait import wait_until

REDIS = "redis://127.0.0.1:6379/0"


def _events(client: TestClient, job_id: object) -> Iterator[tuple[str, dict]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                yield kind or "", json.loads(line[6:])


def _drive(settings: Settings, job_id: object, publish: bool, seen: list) -> threading.Thread:
    """Play a worker: start, report two progress steps, succeed; each change once the stream
    has sent the previous state (and, polling, re-read it twice more: no repeats)."""

    def run() -> None:
        engine = make_engine(settings.db_url)
        sessions = make_sessionmaker(engine)
        publisher = Publisher(settings.events_url if publish else None)
        steps = [
            lambda s: jobs.start(s, job_id=job_id, lease_seconds=LEASE),
            lambda s: jobs.record_progress(
                s, job_id=job_id, phase="phase1", step=1, total=2, fraction=0.5, eta_seconds=1.0
            ),
            lambda s: jobs.record_progress(
                s, job_id=job_id, phase="phase1", step=2, total=2, fraction=1.0, eta_seconds=0.0
            ),
            lambda s: jobs.finish(s, job_id=job_id, status="succeeded", result={"images": []}),
        ]
        for i, step in enumerate(steps):
            with contextlib.suppress(AssertionError):  # go on: the stream must end to report
                wait_until(lambda i=i: len(seen) > i, 10)  # type: ignore[misc]
            if not publish:
                time.sleep(2 * events.POLL_SECONDS)
            with session_scope(sessions) as s:
                step(s)
            publisher.publish(job_id)  # type: ignore[arg-type]
        engine.dispose()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_finished_job_sends_one_event_and_ends(client: TestClient, session: Session) -> None:
    job = make_job(session, make_concept(session), status="failed")
    session.commit()
    assert [(k, d["status"]) for k, d in _events(client, job.id)] == [("status", "failed")]


def test_unknown_job_is_404_before_streaming(client: TestClient) -> None:
    r = client.get("/v1/jobs/00000000-0000-0000-0000-000000000000/events")
    assert r.status_code == 404 and r.json()["type"].endswith("/not_found")


@pytest.mark.parametrize("mode", ["poll", "redis"])
def test_stream_follows_every_change_to_the_end(
    api_key: str, settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    if mode == "redis":
        settings = settings.model_copy(update={"events_url": REDIS})
        monkeypatch.setattr(events, "FALLBACK_SECONDS", 60.0)  # only a message can wake it
    else:
        monkeypatch.setattr(events, "POLL_SECONDS", 0.05)
    job = make_job(session, make_concept(session), kind="synthesize")
    session.commit()
    with TestClient(create_app(settings), headers=bearer(api_key)) as client:
        seen: list[tuple[str, str, int | None]] = []
        thread = _drive(settings, job.id, publish=mode == "redis", seen=seen)
        t0 = time.monotonic()
        for k, d in _events(client, job.id):
            seen.append((k, d["status"], d["progress"]["step"]))
        elapsed = time.monotonic() - t0
    thread.join()
    assert seen == [
        ("status", "queued", None),
        ("status", "running", None),
        ("progress", "running", 1),
        ("progress", "running", 2),
        ("status", "succeeded", 2),
    ]
    if mode == "redis":  # woken by each published message, not by the fallback re-read
        assert elapsed < 10
