"""`Prefer: wait=N` on the job-creating POSTs: 200 with the finished job when it ends within
N seconds, the usual 202 after N seconds otherwise, and no thread held while waiting."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from api.http import accepted
from api.http.prefer import MAX_WAIT, Wait, parse_wait
from api.main import create_app
from api.routes import concepts
from core import events, jobs
from core.db import make_engine, make_sessionmaker, session_scope
from core.events import Publisher
from core.models import Concept, Job
from core.problems import Problem
from core.settings import Settings
from tests.helpers.db import bearer
from tests.helpers.factories import LEASE, concept_meta, make_concept, scene
from tests.helpers.serve import QUICK, serve, serve_process
from tests.helpers.wait import wait_until

BOXES = {"<asset0>": [0.05, 0.3, 0.45, 0.8], "<asset1>": [0.55, 0.3, 0.95, 0.8]}
PROMPT = "a photo of <asset0> and <asset1> at the beach"
REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "POLL_SECONDS", 0.05)  # no Redis here: waits poll the row


def _synthesis(client: TestClient, concept_id: Any, **headers: str) -> Any:
    body = {"prompt": PROMPT, "boxes": BOXES, "steps": 4}
    return client.post(f"/v1/concepts/{concept_id}/syntheses", json=body, headers=headers)


def _worker(settings: Settings, kind: str, *, learned: bool = False) -> threading.Thread:
    """Play a worker: take the first job of `kind` once it is queued, run it, succeed (and
    make its concept ready, as the worker's own outcome transaction does)."""

    def run() -> None:
        engine = make_engine(settings.db_url)
        sessions = make_sessionmaker(engine)

        def queued() -> uuid.UUID | None:
            with sessions() as s:
                return s.scalar(select(Job.id).where(Job.kind == kind, Job.status == "queued"))

        wait_until(queued, 20)
        job_id = queued()
        assert job_id is not None
        time.sleep(0.3)  # the request is waiting by now
        with session_scope(sessions) as s:
            jobs.start(s, job_id=job_id, lease_seconds=LEASE)
        with session_scope(sessions) as s:
            jobs.finish(s, job_id=job_id, status="succeeded", result={"images": []})
            if learned:
                job = s.get(Job, job_id)
                assert job is not None
                s.execute(
                    update(Concept)
                    .where(Concept.id == job.concept_id)
                    .values(status="ready", meta=concept_meta(["red box", "blue disc"]))
                )
        Publisher(settings.events_url).publish(job_id)  # as workers do after each commit
        engine.dispose()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_parse_wait() -> None:
    assert parse_wait([]) is None
    assert parse_wait(["return=minimal"]) is None  # not ours: ignored
    assert parse_wait(["wait=10"]) == Wait(10)
    assert parse_wait(["respond-async, WAIT = 5 ; x=y"]) == Wait(5)
    assert parse_wait(["return=minimal", 'wait="7"']) == Wait(7)  # every line counts
    assert parse_wait(["wait"]) == Wait(MAX_WAIT)
    assert parse_wait(["wait=600"]) == Wait(MAX_WAIT)
    assert Wait(30).applied == {"Preference-Applied": "wait=30"}
    for bad in ("wait=abc", "wait=-1", "wait=1.5", 'wait="5', 'wait="', 'wait=5"'):
        with pytest.raises(Problem) as caught:
            parse_wait([bad])
        assert caught.value.field == "Prefer"


def test_parse_wait_follows_rfc_7240() -> None:
    # An empty value is no value (RFC 7240 section 2): plain `wait`.
    assert parse_wait(["wait="]) == parse_wait(['wait=""']) == Wait(MAX_WAIT)
    # A comma inside a quoted string does not start another preference.
    assert parse_wait(['foo="a,wait=1"']) is None
    assert parse_wait(['foo="a,wait=1", wait=3']) == Wait(3)
    assert parse_wait(['foo="a;b", wait = "4"; x="y,z"']) == Wait(4)


def test_a_wait_of_thousands_of_digits_is_capped() -> None:
    assert parse_wait(["wait=" + "9" * 5000]) == Wait(MAX_WAIT)
    assert parse_wait(["wait=" + "0" * 5000 + "7"]) == Wait(7)
    with pytest.raises(Problem) as caught:
        parse_wait(["wait=" + "9" * 5000 + "x"])
    assert caught.value.field == "Prefer" and len(caught.value.detail) < 200


def test_synthesis_that_ends_within_the_wait_is_200_with_the_finished_job(
    client: TestClient, session: Session, settings: Settings
) -> None:
    concept = make_concept(session)
    session.commit()
    worker = _worker(settings, "synthesize")
    r = _synthesis(client, concept.id, Prefer="wait=20")
    worker.join()
    assert r.status_code == 200, r.text
    assert r.headers["preference-applied"] == "wait=20"
    body = r.json()
    assert body["status"] == "succeeded" and body["queue"] is None
    assert r.headers["location"] == f"/v1/jobs/{body['id']}"
    assert body == client.get(f"/v1/jobs/{body['id']}").json()  # the body GET gives


def test_with_redis_the_job_changed_notice_ends_the_wait(
    api_key: str, settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"events_url": REDIS})
    monkeypatch.setattr(events, "FALLBACK_SECONDS", 60.0)  # only the message can wake it
    concept = make_concept(session)
    session.commit()
    with TestClient(create_app(settings), headers=bearer(api_key)) as client:
        worker = _worker(settings, "synthesize")
        t0 = time.monotonic()
        r = _synthesis(client, concept.id, Prefer="wait=30")
        elapsed = time.monotonic() - t0
        worker.join()
    assert (r.status_code, r.json()["status"]) == (200, "succeeded") and elapsed < 10


def test_without_notices_the_wait_polls(api_key: str, settings: Settings, session: Session) -> None:
    """Redis unreachable: the job exists by then, so the request waits by polling, no 5xx."""
    settings = settings.model_copy(update={"events_url": "redis://127.0.0.1:1/0"})
    concept = make_concept(session)
    session.commit()
    with TestClient(create_app(settings), headers=bearer(api_key)) as client:
        worker = _worker(settings, "synthesize")
        done = _synthesis(client, concept.id, Prefer="wait=20")
        worker.join()
        assert (done.status_code, done.json()["status"]) == (200, "succeeded"), done.text
        r = _synthesis(client, concept.id, Prefer="wait=1")
        assert (r.status_code, r.json()["status"]) == (202, "queued"), r.text


def test_a_wait_over_60_is_capped(client: TestClient, session: Session, settings: Settings) -> None:
    concept = make_concept(session)
    session.commit()
    worker = _worker(settings, "synthesize")
    r = _synthesis(client, concept.id, Prefer="wait=3600")
    worker.join()
    assert r.status_code == 200 and r.headers["preference-applied"] == f"wait={MAX_WAIT}"


def test_a_short_wait_on_a_long_job_is_the_usual_202(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    session.commit()
    t0 = time.monotonic()
    r = _synthesis(client, concept.id, Prefer="wait=1")
    elapsed = time.monotonic() - t0
    assert r.status_code == 202 and 1.0 <= elapsed < 4.0, (r.status_code, elapsed)
    assert r.headers["preference-applied"] == "wait=1"
    assert r.json()["status"] == "queued" and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    plain = _synthesis(client, concept.id, Prefer="return=minimal")
    assert plain.status_code == 202 and "preference-applied" not in plain.headers


def test_a_malformed_wait_is_422_naming_prefer_and_stores_nothing(
    client: TestClient, session: Session
) -> None:
    concept = make_concept(session)
    session.commit()
    r = _synthesis(client, concept.id, Prefer="wait=soon")
    assert r.status_code == 422, r.text
    assert (r.json()["field"], r.json()["type"].rsplit("/", 1)[1]) == ("Prefer", "invalid_prefer")
    assert "wait=N" in r.json()["fix"]
    assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_learning_that_ends_within_the_wait_is_200_with_the_ready_concept(
    client: TestClient, settings: Settings
) -> None:
    image, masks = scene()
    files = [("image", ("scene.png", image, "image/png"))]
    files += [("masks", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    worker = _worker(settings, "learn", learned=True)
    r = client.post("/v1/concepts", files=files, headers={"Prefer": "wait=20"})
    worker.join()
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["concept"]["status"], body["job"]["status"]) == ("ready", "succeeded")
    assert body["concept"]["learn_job_id"] == body["job"]["id"]
    assert body["job"] == client.get(f"/v1/jobs/{body['job']['id']}").json()


def test_an_idempotent_replay_waits_too(
    client: TestClient, session: Session, settings: Settings
) -> None:
    concept = make_concept(session)
    session.commit()
    first = _synthesis(client, concept.id, **{"Idempotency-Key": "k1"})
    assert first.status_code == 202
    t0 = time.monotonic()
    queued = _synthesis(client, concept.id, **{"Idempotency-Key": "k1", "Prefer": "wait=1"})
    assert queued.status_code == 202 and time.monotonic() - t0 >= 1.0
    assert queued.headers["idempotent-replayed"] == "true"
    assert queued.headers["preference-applied"] == "wait=1"
    assert queued.json() == first.json()
    worker = _worker(settings, "synthesize")
    done = _synthesis(client, concept.id, **{"Idempotency-Key": "k1", "Prefer": "wait=20"})
    worker.join()
    assert done.status_code == 200, done.text
    assert done.json()["id"] == first.json()["id"] and done.json()["status"] == "succeeded"
    assert done.headers["idempotent-replayed"] == "true"
    assert done.headers["location"] == first.headers["location"]
    assert done.headers["preference-applied"] == "wait=20"
    assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_waiting_requests_hold_no_thread(settings: Settings, api_key: str) -> None:
    """More waiting requests than the thread pool has threads, and a plain (thread-pool)
    GET still answers at once."""
    tokens, waiting, seconds = 4, 12, 6
    settings = settings.model_copy(update={"max_active_jobs": 100})
    engine = make_engine(settings.db_url)
    with session_scope(make_sessionmaker(engine)) as s:
        concept_id = make_concept(s).id
    with TestClient(create_app(settings), headers=bearer(api_key)) as client:

        def shrink() -> None:
            anyio.to_thread.current_default_thread_limiter().total_tokens = tokens

        assert client.portal is not None
        client.portal.call(shrink)
        with ThreadPoolExecutor(waiting) as pool:
            t0 = time.monotonic()
            answers = [
                pool.submit(_synthesis, client, concept_id, Prefer=f"wait={seconds}")
                for _ in range(waiting)
            ]

            def all_queued() -> bool:
                with make_sessionmaker(engine)() as s:
                    return s.scalar(select(func.count()).select_from(Job)) == waiting

            wait_until(all_queued, seconds - 2, "the submissions did not all get through")
            g0 = time.monotonic()
            listed = client.get("/v1/jobs?limit=1")  # a sync route: it needs a free thread
            took = time.monotonic() - g0
            assert not any(a.done() for a in answers)  # still waiting meanwhile
            got = [a.result() for a in answers]
        elapsed = time.monotonic() - t0
    engine.dispose()
    assert listed.status_code == 200 and listed.json()["total"] == waiting
    assert took < 2.0, took  # a held thread would make it wait for the 6 s waits to end
    assert [r.status_code for r in got] == [202] * waiting
    assert seconds <= elapsed < seconds + 6, elapsed


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("service")) as base:
        yield base


def test_real_service_answers_learning_and_synthesis_when_they_end(
    service: str, tmp_path: Path
) -> None:
    """`mifo serve --base-model tiny`: a worker really runs both jobs while the POSTs wait."""
    import json

    image, masks = scene()
    files = [("image", ("scene.png", image, "image/png"))]
    files += [("masks", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    wait = {"Prefer": "wait=60"}
    with httpx.Client(base_url=service, timeout=90) as http:
        learned = http.post(
            "/v1/concepts", files=files, data={"options": json.dumps(QUICK)}, headers=wait
        )
        assert learned.status_code == 200, learned.text
        assert learned.headers["preference-applied"] == "wait=60"
        concept = learned.json()["concept"]
        assert concept["status"] == "ready" and learned.json()["job"]["status"] == "succeeded"
        body = {"prompt": PROMPT, "boxes": BOXES, "steps": 2}
        made = http.post(f"/v1/concepts/{concept['id']}/syntheses", json=body, headers=wait)
        assert made.status_code == 200, made.text
        job = made.json()
        assert job["status"] == "succeeded"
        shares = job["result"]["images"][0]["in_box_share"]
        assert set(shares) == {"<asset0>", "<asset1>"}
        assert all(0.0 <= v <= 1.0 for v in shares.values())


def test_prefer_over_http_caps_long_digits_and_respects_quotes(
    client: TestClient, session: Session, settings: Settings
) -> None:
    concept = make_concept(session)
    session.commit()
    worker = _worker(settings, "synthesize")
    r = _synthesis(client, concept.id, Prefer="wait=" + "9" * 5000)
    worker.join()
    assert r.status_code == 200, r.text
    assert r.headers["preference-applied"] == f"wait={MAX_WAIT}"
    quoted = _synthesis(client, concept.id, Prefer='foo="a,wait=1"')  # not a wait: no wait
    assert quoted.status_code == 202 and "preference-applied" not in quoted.headers
    bad = _synthesis(client, concept.id, Prefer='wait="5')
    assert (bad.status_code, bad.json()["field"]) == (422, "Prefer")


def _broken(*_: Any) -> Any:
    raise OperationalError("SELECT jobs.status", {}, Exception("server closed the connection"))


@pytest.mark.parametrize("broken", ["status read", "final read"])
def test_a_database_error_while_waiting_answers_the_202(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    """The job and its key are stored before the wait: a failing read answers the 202 that
    points at it (a 503 would make a client without a key submit it again)."""
    if broken == "status read":
        monkeypatch.setattr(accepted, "_ended", _broken)
    else:
        monkeypatch.setattr(accepted, "_ended", lambda *_: True)
        monkeypatch.setattr(accepted, "_render", _broken)
    concept = make_concept(session)
    session.commit()
    r = _synthesis(client, concept.id, Prefer="wait=20")
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    assert r.headers["preference-applied"] == "wait=20" and r.json()["status"] == "queued"
    assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_a_job_deleted_while_waiting_answers_the_202(
    client: TestClient, session: Session, settings: Settings
) -> None:
    concept = make_concept(session)
    session.commit()

    def delete_it() -> None:
        engine = make_engine(settings.db_url)
        sessions = make_sessionmaker(engine)

        def queued() -> uuid.UUID | None:
            with sessions() as s:
                return s.scalar(select(Job.id).where(Job.status == "queued"))

        wait_until(queued, 20)
        time.sleep(0.3)  # the request is waiting by now
        with session_scope(sessions) as s:
            s.execute(delete(Job))
        engine.dispose()

    remover = threading.Thread(target=delete_it, daemon=True)
    remover.start()
    r = _synthesis(client, concept.id, Prefer="wait=20")
    remover.join()
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    assert client.get(r.headers["location"]).status_code == 404


def test_the_uploads_are_closed_before_the_wait(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads: list[Any] = []
    closed_at_wait: list[bool] = []
    learn, until_ended = concepts._learn, accepted.until_ended

    def recording_learn(*args: Any) -> Any:
        uploads.extend([args[5], *args[6]])  # image, masks
        return learn(*args)

    async def recording_wait(*args: Any) -> bool:
        closed_at_wait.extend(upload.file.closed for upload in uploads)
        return await until_ended(*args)

    monkeypatch.setattr(concepts, "_learn", recording_learn)
    monkeypatch.setattr(accepted, "until_ended", recording_wait)
    image, masks = scene()
    files = [("image", ("scene.png", image, "image/png"))]
    files += [("masks", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    r = client.post("/v1/concepts", files=files, headers={"Prefer": "wait=0"})
    assert r.status_code == 202, r.text
    assert len(uploads) == 1 + len(masks) and closed_at_wait == [True] * len(uploads)


def test_a_client_that_goes_away_ends_its_wait_within_a_second(
    client: TestClient,
    session: Session,
    settings: Settings,
    api_key: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The request is driven at the ASGI level, its client going away once the job is
    queued; the change-wait alone (5 s here) would notice that only at its next wake-up."""
    monkeypatch.setattr(events, "POLL_SECONDS", 5.0)
    concept = make_concept(session)
    session.commit()
    body = json.dumps({"prompt": PROMPT, "boxes": BOXES, "steps": 4}).encode()
    path = f"/v1/concepts/{concept.id}/syntheses"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {api_key}".encode()),
            (b"prefer", b"wait=8"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    engine = make_engine(settings.db_url)

    def queued() -> bool:
        with make_sessionmaker(engine)() as s:
            return s.scalar(select(func.count()).select_from(Job)) == 1

    async def drive() -> tuple[float, list[Any]]:
        gone, gone_at, sent = anyio.Event(), [0.0], []
        delivered = False

        async def leave() -> None:
            while not await anyio.to_thread.run_sync(queued):
                await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # the request is waiting by now
            gone_at[0] = time.monotonic()
            gone.set()

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(leave)
            with anyio.fail_after(30):
                await client.app(scope, receive, send)
        return time.monotonic() - gone_at[0], sent

    assert client.portal is not None
    with caplog.at_level(logging.INFO, logger="api.http.accepted"):
        after, sent = client.portal.call(drive)
    engine.dispose()
    assert after < 1.0, after
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 202
    assert any("the client went away" in r.getMessage() for r in caplog.records)


def test_the_openapi_document_names_the_headers_of_both_answers(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/concepts", "/v1/concepts/{concept_id}/syntheses"):
        answers = paths[path]["post"]["responses"]
        for status in ("200", "202"):
            assert {"Location", "Preference-Applied"} <= set(answers[status]["headers"]), path


def test_a_request_still_waiting_when_the_server_stops_gets_its_202(tmp_path: Path) -> None:
    """SIGTERM to `mifo serve` while a POST waits for a long job: the wait ends at once and
    the client gets the 202 naming its job, within the server's drain (not its cut-off)."""
    import signal

    image, masks = scene()
    files = [("image", ("scene.png", image, "image/png"))]
    files += [("masks", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    with (
        serve_process(tmp_path / "data") as (base, proc),
        httpx.Client(base_url=base, timeout=90) as http,
    ):
        long = {**QUICK, "phase1_steps": 2000}  # still learning when the server stops
        waiting = ThreadPoolExecutor(1).submit(
            http.post,
            "/v1/concepts",
            files=files,
            data={"options": json.dumps(long)},
            headers={"Prefer": "wait=60"},
        )
        running = {"status": "running"}

        def started() -> bool:
            assert not waiting.done(), waiting.result().text  # answered before it could wait
            return bool(http.get("/v1/jobs", params=running).json().get("total"))

        wait_until(started, 60, "the learning job never started", 0.5)
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        answer = waiting.result(timeout=30)
        took = time.monotonic() - stopped
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/v1/jobs/{answer.json()['job']['id']}"
    assert answer.headers["preference-applied"] == "wait=60"
    assert took < 3.0, took  # HTTP_DRAIN_SECONDS would cut it off with a 500
