"""Retention: old synthesis images expire (beat task in production, a loop in `mifo serve`);
deleting a concept removes every object under it."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from core import jobs
from core.models import utcnow
from core.retention import run_maintenance
from core.settings import Settings
from core.storage import storage_from_settings
from worker.app import TASK_MAINTENANCE, create_celery

from .conftest import bearer
from .factories import make_artifact, make_concept, make_job


@pytest.fixture
def db_url(postgres_url: str) -> str:
    return postgres_url


def _old_synthesis(session: Session, settings: Settings, age: float) -> tuple:
    storage = storage_from_settings(settings)
    concept = make_concept(session)
    job = make_job(session, concept, kind="synthesize", status="running")
    art = make_artifact(session, concept, job, "image", 0)
    art.key = f"{concept.prefix}syntheses/{job.id}/image_00.png"
    jobs.finish(session, job_id=job.id, status="succeeded",
                result={"images": [{"index": 0, "seed": 0}]})  # fmt: skip
    job.finished_at = utcnow() - timedelta(seconds=age)
    session.commit()
    storage.put(art.key, b"png")
    storage.put(f"{concept.prefix}inputs/image.png", b"input")
    return storage, concept, job


def test_old_synthesis_images_expire(
    client: TestClient, session: Session, settings: Settings
) -> None:
    storage, concept, old = _old_synthesis(session, settings, age=120)
    _, _, fresh = _old_synthesis(session, settings, age=1)
    s = settings.model_copy(update={"synthesis_retention_seconds": 60})
    assert run_maintenance(client.app.state.mifo.sessions, storage, s)["syntheses_expired"] == 1  # type: ignore[attr-defined]
    body = client.get(f"/v1/jobs/{old.id}").json()
    assert body["result"]["expired_at"] and body["result"]["images"][0]["url"] is None
    assert storage.keys(f"{concept.prefix}syntheses/") == []
    assert storage.keys(f"{concept.prefix}inputs/")  # only synthesis images expire
    assert client.get(f"/v1/jobs/{fresh.id}").json()["result"]["images"][0]["url"]


def test_embedded_mode_runs_the_retention_loop(
    settings: Settings, session: Session, api_key: str
) -> None:
    storage, concept, old = _old_synthesis(session, settings, age=120)
    s = settings.model_copy(update={"embedded": True, "synthesis_retention_seconds": 60,
                                    "maintenance_interval_seconds": 0.2})  # fmt: skip
    with TestClient(create_app(s), headers=bearer(api_key)) as c:
        deadline = time.monotonic() + 10
        while c.get(f"/v1/jobs/{old.id}").json()["result"].get("expired_at") is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert storage.keys(f"{concept.prefix}syntheses/") == []


def test_production_schedules_the_task_with_celery_beat(settings: Settings) -> None:
    app = create_celery(settings.model_copy(update={"maintenance_interval_seconds": 120}))
    entry = app.conf.beat_schedule["maintenance"]
    assert entry["task"] == TASK_MAINTENANCE and entry["schedule"] == 120
    assert app.conf.task_routes[TASK_MAINTENANCE] == {"queue": "maintenance"}


def test_deleting_a_concept_removes_all_its_objects(
    client: TestClient, session: Session, settings: Settings
) -> None:
    storage, concept, _ = _old_synthesis(session, settings, age=1)
    storage.put(f"{concept.prefix}concept/concept.json", b"{}")
    assert client.delete(f"/v1/concepts/{concept.id}").status_code == 204
    assert storage.keys(concept.prefix) == []


def test_stale_running_jobs_fail_as_timeout_and_lose_their_output(
    session: Session, settings: Settings
) -> None:
    from core.models import Concept, Job

    storage = storage_from_settings(settings)
    concept = make_concept(session, status="pending")
    stale, fresh = make_job(session, concept), make_job(session, concept)
    for job in (stale, fresh):
        jobs.start(session, job_id=job.id)
    silent = settings.learn_time_limit + settings.stale_job_grace_seconds + 60
    session.get(Job, stale.id).updated_at = utcnow() - timedelta(seconds=silent)  # type: ignore[union-attr]
    session.commit()
    storage.put(f"{concept.prefix}concept/half.bin", b"x")
    from core.db import make_engine, make_sessionmaker

    sessions = make_sessionmaker(make_engine(settings.db_url))
    assert run_maintenance(sessions, storage, settings)["stale_jobs_failed"] == 1
    session.expire_all()
    assert session.get(Job, stale.id).error_type == "timeout"  # type: ignore[union-attr]
    assert session.get(Job, fresh.id).status == "running"  # type: ignore[union-attr]
    assert session.get(Concept, concept.id).status == "failed"  # type: ignore[union-attr]
    assert not storage.keys(f"{concept.prefix}concept/")


def test_objects_that_could_not_be_removed_are_removed_by_maintenance(
    client: TestClient, session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage down while a concept is deleted: the rows go at once, the objects as soon as
    the maintenance task finds storage working again."""
    from core.db import make_engine, make_sessionmaker
    from core.models import Concept, StorageCleanup
    from core.storage import StorageError

    storage, concept, _ = _old_synthesis(session, settings, age=1)
    prefix, concept_id = concept.prefix, concept.id
    served = client.app.state.mifo.storage  # type: ignore[attr-defined]
    working = served.delete_prefix

    def down(prefix: str) -> None:
        raise StorageError("storage unreachable")

    monkeypatch.setattr(served, "delete_prefix", down)
    assert client.delete(f"/v1/concepts/{concept_id}").status_code == 204
    session.expire_all()
    assert session.get(Concept, concept_id) is None
    assert storage.keys(prefix)  # still there, and recorded:
    row = session.get(StorageCleanup, prefix)
    assert row is not None and "unreachable" in (row.last_error or "")

    sessions = make_sessionmaker(make_engine(settings.db_url))
    monkeypatch.setattr(storage, "delete_prefix", down)
    assert run_maintenance(sessions, storage, settings)["storage_cleanups_done"] == 0
    session.expire_all()
    assert session.get(StorageCleanup, prefix).attempts == 2  # type: ignore[union-attr]
    monkeypatch.setattr(storage, "delete_prefix", working)
    assert run_maintenance(sessions, storage, settings)["storage_cleanups_done"] == 1
    assert storage.keys(prefix) == []
    session.expire_all()
    assert session.get(StorageCleanup, prefix) is None


def test_only_object_folders_are_recorded_for_removal(session: Session) -> None:
    from core import cleanup

    for prefix in ("", "/", "concepts/", "concepts"):
        with pytest.raises(ValueError):
            cleanup.defer(session, prefix, "x")
