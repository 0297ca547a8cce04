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
from core.queue import TASK_MAINTENANCE, TASK_RECONCILE, TASK_WEBHOOKS, create_celery
from core.retention import run_maintenance
from core.settings import Settings
from core.storage import storage_from_settings
from tests.helpers.db import bearer
from tests.helpers.factories import LEASE, make_artifact, make_concept, make_job
from tests.helpers.wait import wait_until


@pytest.fixture
def db_url(postgres_url: str) -> str:
    return postgres_url


def _old_synthesis(session: Session, settings: Settings, age: float) -> tuple:
    storage = storage_from_settings(settings)
    concept = make_concept(session)
    job = make_job(session, concept, kind="synthesize", status="running")
    art = make_artifact(session, concept, job, "image", 0)
    art.key = f"{concept.prefix}syntheses/{job.id}/image_00.png"
    jobs.finish(
        session, job_id=job.id, status="succeeded", result={"images": [{"index": 0, "seed": 0}]}
    )
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


def test_old_evaluation_files_expire_and_their_numbers_stay(
    client: TestClient, session: Session, settings: Settings
) -> None:
    storage = storage_from_settings(settings)
    concept = make_concept(session)
    job = make_job(session, concept, kind="evaluate", status="running")
    chart = make_artifact(session, concept, job, "chart", 0)
    chart.key = f"{concept.prefix}evaluations/{job.id}/attempt-1/chart.png"
    row = {"token": "mean", "name": "mean", "images": 1, "sim_c": 0.3, "sim_d": 0.5}
    row |= {"nsim_d": 0.2, "cs": 0.12, "sim_c_std": 0.0, "sim_d_std": 0.0, "nsim_d_std": 0.0}
    row |= {"cs_std": 0.0}
    result = {"rows": [], "mean": row, "images": []}
    jobs.finish(session, job_id=job.id, status="succeeded", result=result)
    job.finished_at = utcnow() - timedelta(seconds=120)
    session.commit()
    storage.put(chart.key, b"png")
    s = settings.model_copy(update={"synthesis_retention_seconds": 60})
    assert run_maintenance(client.app.state.mifo.sessions, storage, s)["syntheses_expired"] == 1  # type: ignore[attr-defined]
    body = client.get(f"/v1/jobs/{job.id}").json()["result"]
    assert body["expired_at"] and body["evaluation"]["chart"] is None
    assert body["evaluation"]["mean"]["cs"] == 0.12
    assert storage.keys(f"{concept.prefix}evaluations/") == []


def test_embedded_mode_runs_the_duties_in_process(
    settings: Settings, session: Session, api_key: str
) -> None:
    from core.duties import Duties, in_process

    storage, concept, old = _old_synthesis(session, settings, age=120)
    s = settings.model_copy(
        update={
            "embedded": True,
            "synthesis_retention_seconds": 60,
            "maintenance_interval_seconds": 0.2,
        }
    )
    with (
        TestClient(create_app(s), headers=bearer(api_key)) as c,
        in_process(Duties.from_settings(s)),
    ):
        wait_until(lambda: c.get(f"/v1/jobs/{old.id}").json()["result"].get("expired_at"), 10)
    assert storage.keys(f"{concept.prefix}syntheses/") == []


def test_the_api_process_runs_no_periodic_duty(
    settings: Settings, session: Session, api_key: str
) -> None:
    """The API serves HTTP; retention (like reconcile and webhooks) runs elsewhere."""
    storage, concept, old = _old_synthesis(session, settings, age=120)
    s = settings.model_copy(
        update={
            "embedded": True,
            "synthesis_retention_seconds": 60,
            "maintenance_interval_seconds": 0.1,
        }
    )
    with TestClient(create_app(s), headers=bearer(api_key)) as c:
        time.sleep(0.5)  # the window under test: five periods in which nothing may run
        assert c.get(f"/v1/jobs/{old.id}").json()["result"].get("expired_at") is None
    assert storage.keys(f"{concept.prefix}syntheses/")


def test_production_sends_every_duty_to_the_control_queue(settings: Settings) -> None:
    s = settings.model_copy(
        update={
            "maintenance_interval_seconds": 120,
            "reconcile_seconds": 7,
            "webhook_poll_seconds": 2,
        }
    )
    app = create_celery(s)
    schedule = app.conf.beat_schedule
    expected = {
        "maintenance": (TASK_MAINTENANCE, 120),
        "reconcile": (TASK_RECONCILE, 7),
        "webhooks": (TASK_WEBHOOKS, 2),
    }
    assert {name: (e["task"], e["schedule"]) for name, e in schedule.items()} == expected
    for name, (task, every) in expected.items():
        # A few periods, and never under 10 s: hosts' clocks differ by a little.
        assert schedule[name]["options"] == {"queue": "control", "expires": max(3 * every, 10)}
        assert app.conf.task_routes[task] == {"queue": "control"}


def test_deleting_a_concept_removes_all_its_objects(
    client: TestClient, session: Session, settings: Settings
) -> None:
    storage, concept, _ = _old_synthesis(session, settings, age=1)
    storage.put(f"{concept.prefix}concept/concept.json", b"{}")
    assert client.delete(f"/v1/concepts/{concept.id}").status_code == 204
    assert storage.keys(concept.prefix) == []


def test_jobs_running_past_their_time_limit_fail_as_timeout_and_lose_their_output(
    session: Session, settings: Settings
) -> None:
    from core.models import Concept, Job

    storage = storage_from_settings(settings)
    concept = make_concept(session, status="pending")
    stale, fresh = make_job(session, concept), make_job(session, concept)
    for job in (stale, fresh):
        jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    silent = settings.learn_time_limit + settings.stale_job_grace_seconds + 60
    session.get(Job, stale.id).started_at = utcnow() - timedelta(seconds=silent)  # type: ignore[union-attr]
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


def _segmentation(
    session: Session, settings: Settings, age: float, status: str = "succeeded"
) -> tuple:
    """A segmentation image last used `age` seconds ago, with one segmentation of `status`
    (succeeded: its mask and overlay stored, their rows written)."""
    from core.models import Artifact, SegmentImage

    storage = storage_from_settings(settings)
    concept = make_concept(session)  # only for its tenant: a segmentation has no concept
    image = SegmentImage(tenant_id=concept.tenant_id, width=8, height=8)
    session.add(image)
    session.flush()
    image.last_used_at = utcnow() - timedelta(seconds=age)
    job = jobs.create_job(
        session,
        tenant_id=concept.tenant_id,
        kind="segment",
        concept_id=None,
        params={"mode": "prompts", "image_id": str(image.id), "prompts": []},
    )
    storage.put(image.key, b"png")
    if status == "succeeded":
        jobs.start(session, job_id=job.id, lease_seconds=LEASE)
        files = f"{image.prefix}{job.id}/attempt-1/"
        result = {"mode": "prompts", "image_id": str(image.id), "width": 8, "height": 8}
        result["masks"] = [{"index": 0, "score": 0.9, "area": 1, "box": [0, 0, 1, 1]}]
        jobs.finish(session, job_id=job.id, status="succeeded", result=result)
        for kind, name in (("mask", "mask_00.png"), ("preview", "overlay.png")):
            storage.put(files + name, b"png")
            session.add(
                Artifact(job_id=job.id, image_id=image.id, kind=kind, key=files + name, size=3)
            )
    session.commit()
    return storage, image, job


def test_segmentation_images_unused_past_the_retention_go_with_their_masks(
    client: TestClient, session: Session, settings: Settings
) -> None:
    from core.db import make_engine, make_sessionmaker
    from core.models import Artifact, SegmentImage

    storage, old, old_job = _segmentation(session, settings, age=120)
    _, fresh, _ = _segmentation(session, settings, age=1)
    _, busy, _ = _segmentation(session, settings, age=120, status="queued")
    (old_id, gone), job_id = (old.id, old.prefix), old_job.id
    sessions = make_sessionmaker(make_engine(settings.db_url))
    s = settings.model_copy(update={"segmentation_retention_seconds": 60})
    assert run_maintenance(sessions, storage, s)["segmentations_expired"] == 1
    assert storage.keys(gone) == []
    assert storage.keys(fresh.prefix) and storage.keys(busy.prefix)  # recent; asked for
    session.expire_all()
    assert session.get(SegmentImage, old_id) is None
    assert session.get(SegmentImage, busy.id) is not None
    assert not session.query(Artifact).filter(Artifact.image_id == old_id).count()
    body = client.get(f"/v1/jobs/{job_id}").json()
    seg = body["result"]["segmentation"]
    assert body["result"]["expired_at"] and seg["masks"][0]["url"] is None
    assert seg["overlay_url"] is None
    off = settings.model_copy(update={"segmentation_retention_seconds": 0})  # 0 keeps them
    assert run_maintenance(sessions, storage, off)["segmentations_expired"] == 0


def test_a_stale_segmentation_loses_its_output_and_a_superseded_attempt_its_folder(
    session: Session, settings: Settings
) -> None:
    """A tenant's job has no concept: the sweeps find its folder through its parameters."""
    from core.db import make_engine, make_sessionmaker
    from core.models import Job

    storage, image, job = _segmentation(session, settings, age=1, status="queued")
    jobs.start(session, job_id=job.id, lease_seconds=LEASE)
    silent = settings.segment_time_limit + settings.stale_job_grace_seconds + 60
    session.get(Job, job.id).started_at = utcnow() - timedelta(seconds=silent)  # type: ignore[union-attr]
    session.commit()
    output = f"{image.prefix}{job.id}/"
    storage.put(f"{output}attempt-1/mask_00.png", b"x")
    sessions = make_sessionmaker(make_engine(settings.db_url))
    assert run_maintenance(sessions, storage, settings)["stale_jobs_failed"] == 1
    assert storage.keys(output) == [] and storage.keys(image.prefix) == [image.key]

    _, image, done = _segmentation(session, settings, age=1)
    session.get(Job, done.id).attempts = 2  # type: ignore[union-attr]  # attempt 1 lost its run
    session.commit()
    left = f"{image.prefix}{done.id}/attempt-2/"
    storage.put(f"{left}mask_00.png", b"x")
    assert run_maintenance(sessions, storage, settings)["superseded_attempts_removed"] == 1
    assert storage.keys(f"{image.prefix}{done.id}/") == [f"{left}mask_00.png"]
