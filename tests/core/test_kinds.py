"""The registry of job kinds (core.kinds): its rows fit the tables, queues and settings they
name, and a kind it does not list is an error everywhere, never taken for another kind.
Whether every kind has its route, task, presenter, runner, client method and docs row is
tests/test_kinds.py."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from core import jobs, kinds
from core.db import make_engine, make_sessionmaker
from core.models import Job, JobStatus, utcnow
from core.queue import QUEUES, Broker, create_celery
from core.reconcile import GRACE_SECONDS, reconcile
from core.settings import Settings
from core.storage import storage_from_settings
from tests.helpers.factories import Doorbell, make_concept, make_job

UNKNOWN = "inpaint"  # a kind a later release might add: unknown to this one
JOB = uuid.UUID("0b7d5a52-3c6e-4f1a-8e0f-5d2f7f9c4e21")


def test_each_kind_is_listed_once_and_fits_the_jobs_table() -> None:
    assert tuple(k.name for k in kinds.ALL) == kinds.NAMES
    assert len(set(kinds.NAMES)) == len(kinds.ALL)
    assert len({k.task for k in kinds.ALL}) == len(kinds.ALL)
    width = Job.__table__.c.kind.type.length
    assert width == kinds.NAME_CHARS
    assert all(0 < len(name) <= width for name in kinds.NAMES), kinds.NAMES
    assert UNKNOWN not in kinds.NAMES


def test_each_kind_has_a_queue_of_its_own() -> None:
    """Queue places count the queued jobs of the job's own kind (core.queueinfo), and the
    reconciler compares a queue's depth with one kind's jobs: two kinds cannot share one."""
    assert len(set(kinds.QUEUES)) == len(kinds.ALL)
    assert set(kinds.QUEUES) < set(QUEUES) and "control" not in kinds.QUEUES
    routes = create_celery(Settings(broker_url="memory://")).conf.task_routes
    assert {k.task: routes[k.task]["queue"] for k in kinds.ALL} == {
        k.task: k.queue for k in kinds.ALL
    }


def test_each_kind_names_a_time_limit_setting() -> None:
    settings = Settings(learn_time_limit=11.0, synthesize_time_limit=22.0)
    for kind in kinds.ALL:
        assert kind.time_limit in Settings.model_fields, kind
        assert settings.time_limit(kind.name) == getattr(settings, kind.time_limit)
        assert kind.time_limit_variable == f"MIFO_{kind.time_limit.upper()}"
    assert settings.time_limit("learn") == 11.0 and settings.time_limit("synthesize") == 22.0


def test_each_kind_writes_in_a_folder_of_its_own() -> None:
    prefix, params = "concepts/c/", {"image_id": "i"}
    owned = [k.name for k in kinds.ALL if k.scope == kinds.CONCEPT]
    folders = {name: jobs.output_prefix(name, prefix, JOB) for name in owned}
    assert folders["learn"] == "concepts/c/concept/"
    assert folders["synthesize"] == f"concepts/c/syntheses/{JOB}/"
    assert all(f.startswith(prefix) and f.endswith("/") for f in folders.values())
    # A tenant's kind has no concept: its folder lies outside every concept's.
    for kind in (k for k in kinds.ALL if k.scope == kinds.TENANT):
        folders[kind.name] = jobs.output_prefix(kind.name, None, JOB, params)
        assert not folders[kind.name].startswith("concepts/") and folders[kind.name].endswith("/")
    assert folders["segment"] == f"segmentations/i/{JOB}/"
    with pytest.raises(ValueError, match="concept's prefix"):
        jobs.output_prefix("learn", None, JOB)
    # No kind's folder lies inside another's: removing one job's output keeps the others'.
    assert not [
        (a, b) for a in folders.values() for b in folders.values() if a != b and b.startswith(a)
    ]
    assert kinds.MAKE_CONCEPTS == ("learn",)


def test_lookups_find_each_kind_by_name_and_by_task() -> None:
    for kind in kinds.ALL:
        assert kinds.get(kind.name) is kind and kinds.by_task(kind.task) is kind


@pytest.mark.parametrize("name", [UNKNOWN, "", "Learn", "learn ", None])
def test_an_unknown_kind_raises(name: Any) -> None:
    with pytest.raises(kinds.UnknownKind, match="unknown job kind") as caught:
        kinds.get(name)
    assert caught.value.name == name and "learn, synthesize" in str(caught.value)
    with pytest.raises(kinds.UnknownKind):
        jobs.output_prefix(name, "concepts/c/", JOB)
    with pytest.raises(kinds.UnknownKind):
        Settings().time_limit(name)


def test_an_unknown_task_raises() -> None:
    with pytest.raises(kinds.UnknownKind, match="unknown job task 'mifo.inpaint'"):
        kinds.by_task("mifo.inpaint")


def test_a_job_of_an_unknown_kind_is_neither_created_nor_sent(session: Session) -> None:
    concept = make_concept(session)
    with pytest.raises(kinds.UnknownKind):
        make_job(session, concept, kind=UNKNOWN)
    session.rollback()
    broker = Broker(create_celery(Settings(broker_url="memory://"), sending=True))
    with pytest.raises(kinds.UnknownKind):
        broker.send(JOB, UNKNOWN)


def test_the_reconciler_leaves_jobs_of_an_unknown_kind_to_the_release_that_knows_it(
    settings: Settings, session: Session
) -> None:
    """Queued but never sent, and running with a lapsed lease: the repairs of a known kind,
    which this release's reconciler neither sends nor re-queues for a kind it does not know
    (a newer release's API may have created them)."""
    concept = make_concept(session)
    unsent = make_job(session, concept, kind="learn")
    lapsed = make_job(session, concept, kind="synthesize", status="running")
    known = make_job(session, concept, kind="synthesize")
    session.commit()
    then = utcnow() - timedelta(seconds=GRACE_SECONDS + 5)
    aged: dict[str, Any] = {"created_at": then, "updated_at": then}
    session.execute(update(Job).where(Job.id == unsent.id).values(kind=UNKNOWN, **aged))
    session.execute(
        update(Job)
        .where(Job.id == lapsed.id)
        .values(kind=UNKNOWN, attempts=1, started_at=then, lease_expires_at=then, **aged)
    )
    session.execute(update(Job).where(Job.id == known.id).values(**aged))
    session.commit()

    broker = Doorbell(waiting=None)
    sessions = make_sessionmaker(make_engine(settings.db_url))
    done = reconcile(sessions, storage_from_settings(settings), settings, broker)
    assert broker.sent == [(known.id, "synthesize")], done
    session.expire_all()
    assert session.get(Job, unsent.id).status == JobStatus.QUEUED  # type: ignore[union-attr]
    assert session.get(Job, lapsed.id).status == JobStatus.RUNNING  # type: ignore[union-attr]
