"""The worker's job runner with the real engine on the tiny model (no broker: called directly)."""

from __future__ import annotations

import io
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.kinds import UnknownKind
from core.models import Job, utcnow
from core.settings import Settings
from tests.helpers.factories import LEASE, Doorbell, lose_worker, make_concept, make_job
from tests.helpers.images import encode, make_scene
from tests.helpers.wait import wait_until
from worker.cache import ConceptCache
from worker.context import WorkerContext
from worker.runner import run_job

QUICK = '{"phase1_steps": 2, "phase2_steps": 1, "reward_steps": 1, "diagnostic_timesteps": [100]}'
BOXES = {"<asset0>": [0.05, 0.3, 0.45, 0.8], "<asset1>": [0.55, 0.3, 0.95, 0.8]}


@pytest.fixture(scope="module")
def base() -> Any:
    import mifo_engine as me

    return me.load_base_model("tiny", device="cpu")


@pytest.fixture
def ctx(settings: Settings) -> WorkerContext:
    return WorkerContext.from_settings(settings.model_copy(update={"progress_interval": 0.05}))


def _learn_request(client: TestClient, options: str = QUICK) -> dict[str, Any]:
    image, masks = make_scene()
    files = [("image", ("scene.png", encode(image), "image/png"))]
    files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
    r = client.post("/v1/concepts", files=files, data={"names": "left, right", "options": options})
    assert r.status_code == 202, r.text
    return r.json()


def test_learn_then_synthesize(client: TestClient, ctx: WorkerContext, base: Any) -> None:
    cache = ConceptCache(2)
    created = _learn_request(client)
    job_id = uuid.UUID(created["job"]["id"])
    assert run_job(ctx, job_id, lambda: base, cache) == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}").json()
    concept = job["result"]["concept"]
    assert job["status"] == "succeeded" and job["progress"]["fraction"] == 1.0
    assert concept["status"] == "ready" and set(concept["diagnostics"]) == {"<asset0>", "<asset1>"}
    for token in concept["tokens"]:
        assert client.get(token["attention_map"]).headers["content-type"] == "image/png"

    body = {"prompt": "a photo of <asset0> and left", "boxes": BOXES, "steps": 2, "num_images": 2}
    r = client.post(f"/v1/concepts/{concept['id']}/syntheses", json=body)
    assert r.status_code == 422 and r.json()["field"] == "boxes[<asset1>]"
    body["prompt"] = "a photo of <asset0> and <asset1>"
    body["options"] = {"max_guidance_iters": 1}
    synth = client.post(f"/v1/concepts/{concept['id']}/syntheses", json=body).json()
    assert run_job(ctx, uuid.UUID(synth["id"]), lambda: base, cache) == "succeeded"
    done = client.get(f"/v1/jobs/{synth['id']}").json()
    images = done["result"]["images"]
    assert [i["seed"] for i in images] == [0, 1]
    assert all(set(i["in_box_share"]) == {"<asset0>", "<asset1>"} for i in images)
    saved = client.get(images[0]["url"]).headers["content-disposition"]
    assert saved == f'attachment; filename="{synth["id"]}_image_00.png"'  # named by its job
    for item in images:
        picture = Image.open(io.BytesIO(client.get(item["url"]).content))
        assert picture.format == "PNG" and picture.size == (64, 64)
        preview = Image.open(io.BytesIO(client.get(item["preview_url"]).content))
        assert preview.format == "PNG" and preview.width >= 64  # may be enlarged for the labels


def test_cancel_while_running_stops_the_engine(
    client: TestClient, ctx: WorkerContext, base: Any, settings: Settings
) -> None:
    created = _learn_request(client, '{"phase1_steps": 400, "phase2_steps": 0}')
    job_id = created["job"]["id"]
    outcome: list[str] = []
    thread = threading.Thread(
        target=lambda: outcome.append(
            run_job(ctx, uuid.UUID(job_id), lambda: base, ConceptCache(1))
        )
    )
    thread.start()
    wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] is not None, 60)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    thread.join(60)
    assert outcome == ["canceled"]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["progress"]["step"] < 400
    assert client.get(f"/v1/concepts/{created['concept']['id']}").json()["status"] == "canceled"
    assert not ctx.storage.keys(f"concepts/{created['concept']['id']}/concept/")


def test_unloadable_model_fails_the_job(client: TestClient, ctx: WorkerContext) -> None:
    import mifo_engine as me

    def broken() -> Any:
        return me.load_base_model("/no/such/model", device="cpu")

    job_id = _learn_request(client)["job"]["id"]
    assert run_job(ctx, uuid.UUID(job_id), broken, ConceptCache(1)) == "failed"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["error"]["type"] == "model_unavailable" and job["error"]["message"]


def test_jobs_of_deleted_concepts_are_skipped(
    client: TestClient, ctx: WorkerContext, base: Any
) -> None:
    created = _learn_request(client)
    client.delete(f"/v1/concepts/{created['concept']['id']}")
    assert run_job(ctx, uuid.UUID(created["job"]["id"]), lambda: base, ConceptCache(1)) == "skipped"


class FailingStorage:
    """Lets the first `ok` writes through, then fails like an unreachable store."""

    def __init__(self, inner: Any, ok: int) -> None:
        self.inner, self.ok = inner, ok

    def put(self, key: str, data: bytes, content_type: str = "") -> None:
        from core.storage import StorageError

        if self.ok <= 0:
            raise StorageError(f"S3 put_object on {key!r} failed: connection reset")
        self.ok -= 1
        self.inner.put(key, data, content_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_storage_failure_fails_the_job_and_leaves_nothing(
    client: TestClient, ctx: WorkerContext, base: Any
) -> None:
    created = _learn_request(client)
    ctx.storage = FailingStorage(ctx.storage, ok=2)  # type: ignore[assignment]
    job_id = uuid.UUID(created["job"]["id"])
    assert run_job(ctx, job_id, lambda: base, ConceptCache(1)) == "failed"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["error"]["type"] == "storage_error" and "connection reset" in job["error"]["message"]
    prefix = f"concepts/{created['concept']['id']}/"
    assert not ctx.storage.keys(prefix + "concept/")  # the two files written were removed
    assert len(ctx.storage.keys(prefix + "inputs/")) == 3  # inputs stay: the concept can retry


def test_time_limit_fails_the_job_as_timeout(
    client: TestClient, ctx: WorkerContext, base: Any
) -> None:
    ctx.settings = ctx.settings.model_copy(update={"learn_time_limit": 1.0})
    created = _learn_request(client, '{"phase1_steps": 2000, "phase2_steps": 0}')
    t0 = time.monotonic()
    assert run_job(ctx, uuid.UUID(created["job"]["id"]), lambda: base, ConceptCache(1)) == "failed"
    assert time.monotonic() - t0 < 15
    job = client.get(f"/v1/jobs/{created['job']['id']}").json()
    assert job["error"]["type"] == "timeout" and "MIFO_LEARN_TIME_LIMIT" in job["error"]["message"]
    assert not ctx.storage.keys(f"concepts/{created['concept']['id']}/concept/")


def test_a_queued_job_canceled_never_runs(client: TestClient, ctx: WorkerContext) -> None:
    created = _learn_request(client)
    job_id = created["job"]["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"

    def never() -> Any:
        raise AssertionError("the model was loaded for a canceled job")

    assert run_job(ctx, uuid.UUID(job_id), never, ConceptCache(1)) == "skipped"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["started_at"] is None and job["attempts"] == 0


def test_lost_workers_are_bounded_and_the_next_attempt_cleans_up(
    client: TestClient, ctx: WorkerContext, base: Any, session: Any
) -> None:
    from core import jobs
    from core.db import session_scope

    created = _learn_request(client)
    job_id = uuid.UUID(created["job"]["id"])
    leftover = f"concepts/{created['concept']['id']}/concept/attempt-2/half-written.bin"
    with session_scope(ctx.sessions) as s:  # two runs whose worker died
        for _ in range(2):
            jobs.start(s, job_id=job_id, lease_seconds=LEASE)
            assert [x.outcome for x in lose_worker(s, job_id)] == ["requeued"]
    ctx.storage.put(leftover, b"x")
    assert run_job(ctx, job_id, lambda: base, ConceptCache(1)) == "succeeded"  # third attempt
    assert leftover not in ctx.storage.keys(f"concepts/{created['concept']['id']}/")
    assert client.get(f"/v1/jobs/{job_id}").json()["attempts"] == 3

    again = uuid.UUID(_learn_request(client)["job"]["id"])
    with session_scope(ctx.sessions) as s:
        outcomes = []
        for _ in range(3):
            jobs.start(s, job_id=again, lease_seconds=LEASE)
            outcomes += [x.outcome for x in lose_worker(s, again)]
    assert outcomes == ["requeued", "requeued", "failed"]
    assert run_job(ctx, again, lambda: base, ConceptCache(1)) == "skipped"
    job = client.get(f"/v1/jobs/{again}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "worker_lost"
    assert "3 runs" in job["error"]["message"]


def test_a_second_message_for_a_running_job_is_skipped(
    client: TestClient, ctx: WorkerContext
) -> None:
    """A duplicate delivery (a late copy after a re-send) never starts a second run."""
    from core import jobs
    from core.db import session_scope

    job_id = uuid.UUID(_learn_request(client)["job"]["id"])
    with session_scope(ctx.sessions) as s:
        jobs.start(s, job_id=job_id, lease_seconds=LEASE)

    def never() -> Any:
        raise AssertionError("a duplicate message loaded the model")

    assert run_job(ctx, job_id, never, ConceptCache(1)) == "skipped"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and job["attempts"] == 1


def test_a_superseded_attempt_cannot_record_an_outcome(
    client: TestClient, ctx: WorkerContext
) -> None:
    from core import jobs
    from core.db import session_scope

    job_id = uuid.UUID(_learn_request(client)["job"]["id"])
    with session_scope(ctx.sessions) as s:
        first = jobs.start(s, job_id=job_id, lease_seconds=LEASE).attempts  # type: ignore[union-attr]
        lose_worker(s, job_id)  # its lease lapsed (the worker was cut off, still running)
        jobs.start(s, job_id=job_id, lease_seconds=LEASE)  # ... and another worker took it
        assert not jobs.record_progress(
            s,
            job_id=job_id,
            phase="p",
            step=1,
            total=2,
            fraction=0.5,
            eta_seconds=None,
            attempt=first,
        )
        assert not jobs.finish(s, job_id=job_id, status="succeeded", result={}, attempt=first)


def test_a_superseded_attempt_stops_uploading_and_never_touches_the_new_files(
    client: TestClient, ctx: WorkerContext, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import jobs
    from core.db import session_scope
    from worker.runner import Claimed, Superseded, _upload

    created = _learn_request(client)
    job_id, concept_id = uuid.UUID(created["job"]["id"]), uuid.UUID(created["concept"]["id"])
    with session_scope(ctx.sessions) as s:
        first = jobs.start(s, job_id=job_id, lease_seconds=LEASE).attempts  # type: ignore[union-attr]
    folder = tmp_path / "upload"  # tmp_path also holds this test's storage
    folder.mkdir()

    def claimed(attempt: int) -> Claimed:
        return Claimed(
            job_id, "learn", {}, concept_id, [], f"concepts/{concept_id}/", "", attempt, 0.0
        )

    old, new = claimed(first), claimed(first + 1)
    assert old.files != new.files and old.files.startswith(old.output)
    (folder / "a.png").write_bytes(b"first")
    assert _upload(ctx, old, folder, old.files) == {old.files + "a.png": 5}
    with session_scope(ctx.sessions) as s:  # the first attempt lost its lease, still running
        lose_worker(s, job_id)
        jobs.start(s, job_id=job_id, lease_seconds=LEASE)
    (folder / "a.png").write_bytes(b"newer")
    _upload(ctx, new, folder, new.files)
    (folder / "a.png").write_bytes(b"stale")
    with pytest.raises(Superseded):  # the fence: checked before every file
        _upload(ctx, old, folder, old.files)
    # The instant between a fence check and its write: the stale attempt passed the check
    # just before the redelivery. It writes, but only into its own folder.
    monkeypatch.setattr(jobs, "is_current", lambda *a, **k: True)
    _upload(ctx, old, folder, old.files)
    assert ctx.storage.get(new.files + "a.png") == b"newer"


def test_an_attempt_overtaken_before_recording_removes_its_own_folder(
    client: TestClient, ctx: WorkerContext, base: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempt finished learning, but a redelivery took the job over just before it
    recorded success: the record is refused, and its files (in its own folder) are removed,
    leaving the newer attempt's folder alone."""
    import worker.runner as runner
    from core import jobs
    from core.db import session_scope

    created = _learn_request(client)
    job_id, concept_id = uuid.UUID(created["job"]["id"]), created["concept"]["id"]
    newer = f"concepts/{concept_id}/concept/attempt-2/"
    real = runner._recorded  # the instant between upload and record: reachable no other way

    def overtaken(ctx_: Any, job: Any, status: str, **kw: Any) -> str:
        assert ctx.storage.keys(job.files)  # this attempt uploaded its concept
        with session_scope(ctx.sessions) as s:
            lose_worker(s, job_id)
            assert jobs.start(s, job_id=job_id, lease_seconds=LEASE).attempts == 2  # type: ignore[union-attr]
        ctx.storage.put(newer + "concept.json", b"{}")  # the newer attempt's first file
        return real(ctx_, job, status, **kw)

    monkeypatch.setattr(runner, "_recorded", overtaken)
    assert run_job(ctx, job_id, lambda: base, ConceptCache(1)) == "superseded"
    assert ctx.storage.keys(f"concepts/{concept_id}/concept/") == [newer + "concept.json"]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and job["attempts"] == 2
    assert client.get(f"/v1/concepts/{concept_id}").json()["status"] == "pending"


def test_a_learned_concept_lives_in_its_attempts_folder(
    client: TestClient, ctx: WorkerContext, base: Any, session: Any
) -> None:
    from core.models import Concept

    created = _learn_request(client)
    concept_id = uuid.UUID(created["concept"]["id"])
    assert run_job(ctx, uuid.UUID(created["job"]["id"]), lambda: base, ConceptCache(1)) == (
        "succeeded"
    )
    concept = session.get(Concept, concept_id)
    assert concept.files == f"concepts/{concept_id}/concept/attempt-1/"
    stored = ctx.storage.keys(f"concepts/{concept_id}/concept/")
    assert stored and all(k.startswith(concept.files) for k in stored)
    assert concept.files + "concept.json" in stored


@pytest.mark.parametrize("ending", ["canceled", "exhausted"])
def test_a_job_ended_by_the_reconciler_is_cleaned_up_and_settles_its_concept(
    client: TestClient, ctx: WorkerContext, ending: str
) -> None:
    from core import jobs
    from core.db import session_scope
    from core.reconcile import reconcile

    created = _learn_request(client)
    job_id, concept_id = uuid.UUID(created["job"]["id"]), created["concept"]["id"]
    with session_scope(ctx.sessions) as s:
        jobs.start(s, job_id=job_id, lease_seconds=LEASE)
        for _ in range(0 if ending == "canceled" else 2):  # runs whose worker died
            lose_worker(s, job_id)
            jobs.start(s, job_id=job_id, lease_seconds=LEASE)
    if ending == "canceled":  # asked while the worker looked alive: it is to stop
        assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "running"
    ctx.storage.put(f"concepts/{concept_id}/concept/half-written.bin", b"x")
    with session_scope(ctx.sessions) as s:  # ... and then its worker turned out to be gone
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow()))
    done = reconcile(ctx.sessions, ctx.storage, ctx.settings, Doorbell())
    assert done[ending if ending == "canceled" else "failed"] == 1
    assert not ctx.storage.keys(f"concepts/{concept_id}/concept/")
    concept = client.get(f"/v1/concepts/{concept_id}").json()
    assert concept["status"] == ("canceled" if ending == "canceled" else "failed")


def test_canceling_a_queued_learn_job_cancels_its_concept(client: TestClient) -> None:
    created = _learn_request(client)
    assert client.post(f"/v1/jobs/{created['job']['id']}/cancel").json()["status"] == "canceled"
    assert client.get(f"/v1/concepts/{created['concept']['id']}").json()["status"] == "canceled"


def test_any_base_model_load_failure_is_model_unavailable(
    client: TestClient, ctx: WorkerContext
) -> None:
    def broken() -> Any:
        raise OSError("CUDA driver missing")

    job_id = _learn_request(client)["job"]["id"]
    assert run_job(ctx, uuid.UUID(job_id), broken, ConceptCache(1)) == "failed"
    error = client.get(f"/v1/jobs/{job_id}").json()["error"]
    assert error["type"] == "model_unavailable" and "CUDA driver missing" in error["message"]


def test_a_lost_database_leaves_the_job_queued_for_the_reconciler(
    client: TestClient, ctx: WorkerContext, settings: Settings
) -> None:
    """The message is acknowledged (handing it back at once would spin through the outage);
    the job stays queued, and the reconciler sends it again once the database answers."""
    from sqlalchemy.exc import OperationalError

    from core.reconcile import reconcile

    job_id = uuid.UUID(_learn_request(client)["job"]["id"])
    sessions = ctx.sessions

    def down() -> Any:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    ctx.sessions = down  # type: ignore[assignment]
    assert run_job(ctx, job_id, lambda: None, ConceptCache(1)) == "skipped"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["attempts"] == 0
    with sessions() as s:  # sent over the grace period ago, and the broker holds nothing
        s.execute(
            update(Job).where(Job.id == job_id).values(enqueued_at=utcnow() - timedelta(minutes=1))
        )
        s.commit()
    broker = Doorbell(waiting=0)
    assert reconcile(sessions, ctx.storage, settings, broker)["lost_resent"] == 1
    assert broker.sent == [(job_id, "learn")]


@pytest.mark.parametrize("error", ["hard_limit", "escaped"])
def test_a_task_failure_outside_the_runner_ends_the_job(
    client: TestClient, ctx: WorkerContext, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.exceptions import TimeLimitExceeded

    from core import jobs
    from core.db import session_scope
    from worker import runner, tasks

    created = _learn_request(client)
    job_id, concept_id = created["job"]["id"], created["concept"]["id"]
    with session_scope(ctx.sessions) as s:
        jobs.start(s, job_id=uuid.UUID(job_id), lease_seconds=LEASE)
    ctx.storage.put(f"concepts/{concept_id}/concept/half.bin", b"x")
    exc = TimeLimitExceeded(10) if error == "hard_limit" else RuntimeError("boom")
    monkeypatch.setattr(tasks.EngineTask, "ctx", ctx)  # not the one built from the environment
    if error == "hard_limit":  # the parent knows no attempt: it fences on the start time
        tasks.JOB_TASKS["learn"].on_failure(exc, "task-id", (job_id,), {}, None)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"  # too young
        with session_scope(ctx.sessions) as s:
            then = utcnow() - timedelta(seconds=ctx.settings.learn_time_limit + 1)
            s.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(started_at=then))
    else:
        monkeypatch.setitem(runner.RUNNING, uuid.UUID(job_id), 1)  # attempt 1 ran here
    tasks.JOB_TASKS["learn"].on_failure(exc, "task-id", (job_id,), {}, None)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"]["type"] == ("timeout" if error == "hard_limit" else "internal_error")
    assert client.get(f"/v1/concepts/{concept_id}").json()["status"] == "failed"
    assert not ctx.storage.keys(f"concepts/{concept_id}/concept/")


def test_the_heartbeat_keeps_the_lease_while_the_model_loads_and_hears_a_cancel(
    client: TestClient, ctx: WorkerContext, base: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load longer than the lease: the heartbeat renews it from its own thread, so the
    reconciler leaves the job alone; a cancel sent meanwhile stops it before the first step."""
    from core import jobs
    from core.db import session_scope

    ctx.settings = ctx.settings.model_copy(update={"lease_seconds": 3.0, "heartbeat_seconds": 0.5})
    job_id = uuid.UUID(_learn_request(client)["job"]["id"])
    lapsed: list[Any] = []
    heard: list[bool] = []  # cancel_requested, as each renewal read it
    real_renew = jobs.renew

    def renew(*args: Any, **kwargs: Any) -> Any:
        lease = real_renew(*args, **kwargs)
        heard.append(lease.cancel_requested)
        return lease

    monkeypatch.setattr(jobs, "renew", renew)

    def slow_load() -> Any:
        time.sleep(3.2)  # past the 3 s lease the claim, just before, set
        with session_scope(ctx.sessions) as s:
            lapsed.extend(jobs.requeue_lapsed(s, max_attempts=3))
        assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "running"
        # Two renewals read it: the first has then surely set its flag (same thread).
        wait_until(lambda: heard.count(True) >= 2, 10)
        return base

    assert run_job(ctx, job_id, slow_load, ConceptCache(1)) == "canceled"
    assert lapsed == []
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["progress"]["step"] is None and job["attempts"] == 1


def test_a_failure_of_a_superseded_attempt_never_ends_the_newer_one(
    client: TestClient, ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 lost its lease and attempt 2 runs; attempt 1's late failure changes nothing."""
    from core import jobs
    from core.db import session_scope
    from worker import runner, tasks

    job_id = uuid.UUID(_learn_request(client)["job"]["id"])
    with session_scope(ctx.sessions) as s:
        jobs.start(s, job_id=job_id, lease_seconds=LEASE)
        lose_worker(s, job_id)
        jobs.start(s, job_id=job_id, lease_seconds=LEASE)
    monkeypatch.setattr(tasks.EngineTask, "ctx", ctx)
    monkeypatch.setitem(runner.RUNNING, job_id, 1)
    tasks.JOB_TASKS["learn"].on_failure(RuntimeError("late"), "task-id", (str(job_id),), {}, None)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and job["attempts"] == 2


def test_a_cpu_job_runs_on_the_threads_the_machine_leaves_idle(
    client: TestClient, ctx: WorkerContext, base: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil
    import torch

    from worker import threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    monkeypatch.setattr(psutil, "cpu_count", lambda: 4)
    for percent, chosen in ((0.0, 4), (50.0, 2), (80.0, 1), (100.0, 1)):
        monkeypatch.setattr(psutil, "cpu_percent", lambda interval, p=percent: p)
        assert threads.cpu_threads(0) == chosen
    assert threads.cpu_threads(3) == 3  # MIFO_CPU_THREADS wins
    try:
        ctx.settings = ctx.settings.model_copy(update={"cpu_threads": 2})
        job_id = uuid.UUID(_learn_request(client)["job"]["id"])
        assert run_job(ctx, job_id, lambda: base, ConceptCache(1)) == "succeeded"
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_success_whose_commit_answer_was_lost_is_kept(
    client: TestClient, ctx: WorkerContext, base: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit of a success went through but its answer never came (the connection
    dropped at COMMIT): the retry finds the job succeeded by this very attempt, and keeps its
    files instead of taking itself for superseded."""
    import worker.runner as runner
    from core.db import session_scope

    created = _learn_request(client)
    job_id = uuid.UUID(created["job"]["id"])
    real, calls = runner._record, []

    def answer_lost(ctx_: Any, job: Any, status: str, **kw: Any) -> str:
        calls.append(status)
        outcome = real(ctx_, job, status, **kw)
        if len(calls) == 1:  # committed, but the caller hears a lost connection
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return outcome

    monkeypatch.setattr(runner, "_record", answer_lost)
    monkeypatch.setattr(runner, "RECORD_RETRY_SECONDS", 0.01)
    assert run_job(ctx, job_id, lambda: base, ConceptCache(1)) == "succeeded"
    assert calls == ["succeeded", "succeeded"]
    with session_scope(ctx.sessions) as s:
        from core.models import Concept

        concept = s.get(Concept, uuid.UUID(created["concept"]["id"]))
        assert concept is not None and concept.status == "ready" and concept.files
        assert ctx.storage.keys(concept.files)  # its files stayed


def test_a_job_of_a_kind_this_worker_does_not_know_is_an_error_and_stays_queued(
    ctx: WorkerContext, session: Session
) -> None:
    """Never run as another kind: the claim is taken back, the job left to a worker that knows
    its kind (the error goes to the task, which logs it)."""
    job = make_job(session, make_concept(session), kind="synthesize")
    session.commit()
    session.execute(update(Job).where(Job.id == job.id).values(kind="inpaint"))
    session.commit()

    def no_model() -> Any:
        raise AssertionError("no model is loaded for a job of an unknown kind")

    with pytest.raises(UnknownKind, match="'inpaint'"):
        run_job(ctx, job.id, no_model, ConceptCache(1))
    session.expire_all()
    row = session.get(Job, job.id)
    assert row is not None and (row.status, row.attempts) == ("queued", 0)
