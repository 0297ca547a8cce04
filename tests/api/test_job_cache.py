"""The status cache of GET /v1/jobs/{id}: change events invalidate it, a Redis outage turns
it off (polls read the database), and tenants stay isolated through it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.http.jobcache import JobCache
from api.main import create_app
from core.events import Publisher
from core.models import Job
from core.settings import Settings
from tests.helpers.db import bearer, new_key
from tests.helpers.factories import make_concept, make_job
from tests.helpers.servers import TcpProxy
from tests.helpers.wait import wait_until

REDIS = "redis://127.0.0.1:6379/0"


def _set_status(session: Session, job_id: uuid.UUID, status: str) -> None:
    """Change the row behind the API's back (no event): only a database read can see it."""
    session.execute(update(Job).where(Job.id == job_id).values(status=status))
    session.commit()


def _live(client: TestClient) -> JobCache:
    cache: JobCache = client.app.state.mifo.job_cache  # type: ignore[attr-defined]
    wait_until(lambda: cache.live)
    return cache


@pytest.fixture
def cached(settings: Settings, api_key: str) -> Iterator[TestClient]:
    s = settings.model_copy(update={"events_url": REDIS})
    with TestClient(create_app(s), headers=bearer(api_key)) as c:
        _live(c)
        yield c


def test_a_change_event_invalidates_the_cached_body(cached: TestClient, session: Session) -> None:
    job = make_job(session, make_concept(session), kind="synthesize")
    session.commit()
    assert cached.get(f"/v1/jobs/{job.id}").json()["status"] == "queued"
    _set_status(session, job.id, "running")
    assert cached.get(f"/v1/jobs/{job.id}").json()["status"] == "queued"  # served from cache
    Publisher(REDIS).publish(job.id)
    wait_until(lambda: cached.get(f"/v1/jobs/{job.id}").json()["status"] == "running", 5)


def test_cancel_through_the_api_is_seen_at_once(cached: TestClient, session: Session) -> None:
    job = make_job(session, make_concept(session), kind="synthesize")
    session.commit()
    assert cached.get(f"/v1/jobs/{job.id}").json()["status"] == "queued"
    assert cached.post(f"/v1/jobs/{job.id}/cancel").status_code == 202
    assert cached.get(f"/v1/jobs/{job.id}").json()["status"] == "canceled"


def test_cached_body_equals_the_database_body(
    cached: TestClient, settings: Settings, api_key: str, session: Session
) -> None:
    job = make_job(session, make_concept(session), kind="synthesize")
    session.commit()
    first = cached.get(f"/v1/jobs/{job.id}")
    again = cached.get(f"/v1/jobs/{job.id}")
    with TestClient(create_app(settings), headers=bearer(api_key)) as plain:  # no cache
        fresh = plain.get(f"/v1/jobs/{job.id}")
    bodies = [r.json() for r in (first, again, fresh)]
    # A queued job starts "now + its wait": the later read may be a second on. Within that,
    # the three bodies are the same.
    starts = [datetime.fromisoformat(b["queue"].pop("estimated_start_at")) for b in bodies]
    assert starts[0] <= starts[1] <= starts[2] <= starts[0] + timedelta(seconds=2)
    assert bodies[0] == bodies[1] == bodies[2]
    assert again.headers["content-type"] == fresh.headers["content-type"] == "application/json"


def test_another_tenant_gets_404_through_the_cache(
    cached: TestClient, settings: Settings, session: Session
) -> None:
    job = make_job(session, make_concept(session), kind="synthesize")
    session.commit()
    assert cached.get(f"/v1/jobs/{job.id}").status_code == 200  # now cached
    other = bearer(new_key(settings, "someone-else"))
    theirs = cached.get(f"/v1/jobs/{job.id}", headers=other)
    missing = cached.get(f"/v1/jobs/{uuid.uuid4()}", headers=other)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["type"] == missing.json()["type"]
    assert theirs.headers["content-type"] == "application/problem+json"


def test_redis_outage_turns_the_cache_off(
    settings: Settings, api_key: str, session: Session
) -> None:
    proxy = TcpProxy(("127.0.0.1", 6379))
    proxy.start()
    s = settings.model_copy(update={"events_url": f"redis://127.0.0.1:{proxy.port}/0"})
    job = make_job(session, make_concept(session), kind="synthesize")
    session.commit()
    try:
        with TestClient(create_app(s), headers=bearer(api_key)) as client:
            cache = _live(client)
            assert client.get(f"/v1/jobs/{job.id}").json()["status"] == "queued"
            proxy.stop()  # events can no longer arrive: nothing cached may be served
            wait_until(lambda: not cache.live)
            _set_status(session, job.id, "running")
            assert client.get(f"/v1/jobs/{job.id}").json()["status"] == "running"
            proxy.start()  # subscribed again: cached, and kept fresh by events
            _live(client)
            _set_status(session, job.id, "succeeded")
            Publisher(REDIS).publish(job.id)
            wait_until(lambda: client.get(f"/v1/jobs/{job.id}").json()["status"] == "succeeded", 5)
    finally:
        proxy.stop()


def test_a_read_overtaken_by_an_event_is_not_kept() -> None:
    cache = JobCache("redis://unused")
    cache.live = True
    job, tenant = uuid.uuid4(), uuid.uuid4()
    mark = cache.mark()
    cache.changed(job)  # arrives while the database read is in flight
    cache.put(job, "http://x/", tenant, b"old", mark)
    assert cache.get(job, "http://x/") is None
    cache.put(job, "http://x/", tenant, b"new", cache.mark())
    assert cache.get(job, "http://x/") == (tenant, b"new", False)


def test_entries_expire_after_the_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    cache = JobCache("redis://unused", clock=lambda: now[0])
    cache.live = True
    job, tenant = uuid.uuid4(), uuid.uuid4()
    cache.put(job, "b", tenant, b"x", cache.mark())
    assert cache.get(job, "b") == (tenant, b"x", False)
    now[0] += 5.1
    assert cache.get(job, "b") is None


def test_a_polled_entry_is_reread_before_it_expires(
    cached: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.http import jobcache

    monkeypatch.setattr(jobcache, "REREAD_SECONDS", 0.0)  # every hit is due
    job = make_job(session, make_concept(session), kind="synthesize")
    session.commit()
    assert cached.get(f"/v1/jobs/{job.id}").json()["status"] == "queued"
    _set_status(session, job.id, "running")  # no event: only the re-read can see it
    assert cached.get(f"/v1/jobs/{job.id}").json()["status"] == "queued"  # answers at once
    wait_until(lambda: cached.get(f"/v1/jobs/{job.id}").json()["status"] == "running", 5)


def _entries(cache: JobCache, job_id: uuid.UUID) -> int:
    return len(cache.cached().get(job_id, []))


def test_another_tenant_varying_the_host_keeps_nothing(
    cached: TestClient, settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bodies are kept for their owner only: another tenant's polls, under any Host, store
    nothing; once the owner's body is cached they do not even read the database."""
    from api.routes import jobs as job_routes

    cache = _live(cached)
    job = make_job(session, make_concept(session), kind="synthesize")
    session.commit()
    other = bearer(new_key(settings, "someone-else"))
    missing = cached.get(f"/v1/jobs/{uuid.uuid4()}", headers=other)

    def problem(r: object) -> dict:
        body = r.json()  # type: ignore[attr-defined]
        return {k: v for k, v in body.items() if k not in ("detail", "instance")}

    for i in range(100):
        r = cached.get(f"/v1/jobs/{job.id}", headers={**other, "Host": f"h{i}.example"})
        assert r.status_code == missing.status_code == 404
        assert problem(r) == problem(missing)
        assert r.headers["content-type"] == "application/problem+json"
    assert cache.cached() == {}

    assert cached.get(f"/v1/jobs/{job.id}").status_code == 200  # the owner's: kept
    assert _entries(cache, job.id) == 1
    reads: list[uuid.UUID] = []
    body = job_routes._job_body  # the route's database read: no public seam counts it
    monkeypatch.setattr(
        job_routes, "_job_body", lambda r, s, j, t: reads.append(j) or body(r, s, j, t)
    )
    for i in range(100):
        r = cached.get(f"/v1/jobs/{job.id}", headers={**other, "Host": f"g{i}.example"})
        assert r.status_code == 404
    assert reads == [] and _entries(cache, job.id) == 1


def test_the_owner_varying_the_host_keeps_a_few_bases(cached: TestClient, session: Session) -> None:
    from api.http.jobcache import MAX_BASES

    cache = _live(cached)
    job = make_job(session, make_concept(session), kind="synthesize")
    session.commit()
    for i in range(100):
        r = cached.get(f"/v1/jobs/{job.id}", headers={"Host": f"h{i}.example"})
        assert r.status_code == 200
    assert _entries(cache, job.id) == MAX_BASES
    assert sorted(cache.cached()[job.id]) == sorted(f"http://h{i}.example/" for i in range(96, 100))


def test_expired_entries_are_evicted() -> None:
    now = [100.0]
    cache = JobCache("redis://unused", clock=lambda: now[0])
    cache.live = True
    job, other, tenant = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    cache.put(job, "a", tenant, b"x", cache.mark())
    cache.put(other, "a", tenant, b"y", cache.mark())
    now[0] += 5.1
    cache.put(job, "b", tenant, b"x", cache.mark())  # a put drops the job's expired bases
    assert cache.cached()[job] == ["b"]
    assert cache.get(other, "a") is None and other not in cache.cached()  # so does a get
    assert cache.owner(job) == tenant and cache.owner(other) is None


def test_a_full_cache_makes_room_by_dropping_the_job_cached_longest_ago(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import api.http.jobcache

    monkeypatch.setattr(api.http.jobcache, "MAX_JOBS", 3)
    cache = JobCache("redis://unused")
    cache.live = True
    tenant = uuid.uuid4()
    jobs = [uuid.uuid4() for _ in range(5)]
    for job in jobs:
        cache.put(job, "a", tenant, b"x", cache.mark())
    assert list(cache.cached()) == jobs[2:]  # the two oldest made room, the rest stayed
    cache.put(jobs[3], "b", tenant, b"x", cache.mark())  # a known job takes no room
    assert list(cache.cached()) == jobs[2:]
