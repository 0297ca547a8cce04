"""What an attempt that lost its job leaves behind: nothing listed, and nothing kept once the
maintenance duty's sweep has passed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from core import jobs
from core.models import Job, utcnow
from core.retention import sweep_superseded
from core.settings import Settings
from core.storage import LocalStorage, storage_from_settings
from tests.helpers.factories import LEASE, lose_worker, make_concept, make_job, scene

OUT = "concepts/c/syntheses/j/"


def test_superseded_folders_are_every_attempt_but_the_live_one_up_to_the_newest() -> None:
    keys = [
        f"{OUT}attempt-1/image_00.png",
        f"{OUT}attempt-2/image_00.png",
        f"{OUT}attempt-2/preview_00.png",
        f"{OUT}attempt-3/image_00.png",
        f"{OUT}attempt-x/odd.png",  # not an attempt folder: never touched
        f"{OUT}loose.png",
        "concepts/c/syntheses/other/attempt-1/image_00.png",  # another job's
    ]
    assert jobs.superseded_folders(OUT, keys, live=2, newest=2) == [f"{OUT}attempt-1/"]
    assert jobs.superseded_folders(OUT, keys, live=3, newest=3) == [
        f"{OUT}attempt-1/",
        f"{OUT}attempt-2/",
    ]
    # Nothing live (queued again, or ended): all attempts so far, never a newer one.
    assert jobs.superseded_folders(OUT, keys, live=None, newest=2) == [
        f"{OUT}attempt-1/",
        f"{OUT}attempt-2/",
    ]
    assert jobs.superseded_folders(OUT, [], live=None, newest=5) == []


@pytest.fixture
def storage(settings: Settings) -> LocalStorage:
    made = storage_from_settings(settings)
    assert isinstance(made, LocalStorage)
    return made


def _output(session: Session, job: Job) -> str:
    output = jobs.job_output(session, job.id)
    assert output is not None
    return output


def test_the_sweep_removes_a_superseded_attempts_files_and_keeps_the_live_ones(
    session: Session, storage: LocalStorage
) -> None:
    concept = make_concept(session)
    retried = make_job(session, concept, kind="synthesize", params={})
    for _ in range(2):  # attempt 1 lost its worker; attempt 2 runs
        jobs.start(session, job_id=retried.id, lease_seconds=LEASE)
        if retried.attempts < 2:
            lose_worker(session, retried.id)
        session.refresh(retried)
    session.commit()
    out = _output(session, retried)
    # Attempt 1 was paused, woke up, wrote one more file and was killed before removing it.
    storage.put(f"{out}attempt-1/image_00.png", b"stale")
    storage.put(f"{out}attempt-2/image_00.png", b"live")
    ended = make_job(session, concept, kind="synthesize", params={})
    jobs.start(session, job_id=ended.id, lease_seconds=LEASE)
    jobs.finish(session, job_id=ended.id, status="failed", attempt=1)
    session.commit()
    storage.put(f"{_output(session, ended)}attempt-1/image_00.png", b"written after the end")

    assert sweep_superseded(session, storage) == 2
    assert storage.keys(out) == [f"{out}attempt-2/image_00.png"]
    assert storage.keys(_output(session, ended)) == []
    # Once the live attempt succeeds, its folder stays: it is the job's result.
    assert jobs.finish(session, job_id=retried.id, status="succeeded", result={}, attempt=2)
    session.commit()
    assert sweep_superseded(session, storage) == 0
    assert storage.keys(out) == [f"{out}attempt-2/image_00.png"]


def test_the_sweep_looks_back_one_window_only(session: Session, storage: LocalStorage) -> None:
    concept = make_concept(session)
    old = make_job(session, concept, kind="synthesize", params={})
    jobs.start(session, job_id=old.id, lease_seconds=LEASE)
    jobs.finish(session, job_id=old.id, status="canceled", attempt=1)
    session.execute(
        update(Job).where(Job.id == old.id).values(updated_at=utcnow() - timedelta(days=2))
    )
    session.commit()
    storage.put(f"{_output(session, old)}attempt-1/image_00.png", b"x")
    assert sweep_superseded(session, storage) == 0


def test_inputs_stored_ahead_of_a_commit_that_never_came_are_removed_later(
    session: Session, storage: LocalStorage, settings: Settings
) -> None:
    """An API process killed between storing a concept's inputs and committing its row:
    the record made before the files were stored outlives it, and maintenance removes them
    once it is due (never before: the commit may still be on its way)."""
    from core import cleanup
    from core.db import make_engine, make_sessionmaker
    from core.models import StorageCleanup

    sessions = make_sessionmaker(make_engine(settings.db_url))
    cleanup.pending(sessions, "concepts/gone/")
    storage.put("concepts/gone/inputs/image.png", b"x")
    assert cleanup.retry(session, storage) == 0  # not due yet
    assert storage.keys("concepts/gone/") == ["concepts/gone/inputs/image.png"]
    session.execute(update(StorageCleanup).values(updated_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    assert cleanup.retry(session, storage) == 1
    assert storage.keys("concepts/gone/") == []


def test_a_committed_concept_keeps_its_inputs(client: TestClient, session: Session) -> None:
    from sqlalchemy import func, select

    from core.models import StorageCleanup

    image, masks = scene()
    files = [("image", ("s.png", image, "image/png"))]
    files += [("masks", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    assert client.post("/v1/concepts", files=files).status_code == 202
    assert session.scalar(select(func.count()).select_from(StorageCleanup)) == 0
