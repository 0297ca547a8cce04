"""GET/POST /v1/jobs: filters, pagination, cancellation, result links, no N+1 queries."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from core import jobs
from mifo_client import models
from tests.helpers.factories import LEASE, make_artifact, make_concept, make_job


def test_filters_and_pagination(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    for status in ("queued", "running", "failed"):
        make_job(session, concept, status=status)
    make_job(session, concept, kind="synthesize", status="queued")
    session.commit()
    assert client.get("/v1/jobs").json()["total"] == 4
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()
    assert queued["total"] == 2 and {j["status"] for j in queued["data"]} == {"queued"}
    both = client.get("/v1/jobs", params=[("status", "running"), ("status", "failed")]).json()
    assert both["total"] == 2
    synth = client.get("/v1/jobs", params={"kind": "synthesize"}).json()
    assert [j["kind"] for j in synth["data"]] == ["synthesize"]
    page = client.get("/v1/jobs", params={"limit": 3}).json()
    assert len(page["data"]) == 3 and "offset=3" in page["next"]
    r = client.get("/v1/jobs", params={"status": "done"})
    assert r.status_code == 422 and r.json()["field"] == "status[0]"
    r = client.get("/v1/jobs", params={"offset": 2**63})  # past any database integer
    assert r.status_code == 422 and r.json()["field"] == "offset"


def test_cancel_queued_running_and_finished(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    queued = make_job(session, concept)
    running = make_job(session, concept)
    jobs.start(session, job_id=running.id, lease_seconds=LEASE)
    done = make_job(session, concept, status="succeeded")
    session.commit()
    r = client.post(f"/v1/jobs/{queued.id}/cancel")
    assert (r.status_code, r.json()["status"]) == (202, "canceled")
    assert client.post(f"/v1/jobs/{queued.id}/cancel").json()["status"] == "canceled"
    r = client.post(f"/v1/jobs/{running.id}/cancel")
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    r = client.post(f"/v1/jobs/{done.id}/cancel")
    assert r.status_code == 409 and r.json()["type"].endswith("/job_finished")


def test_synthesis_result_lists_images_with_urls_and_seeds(
    client: TestClient, session: Session
) -> None:
    concept = make_concept(session)
    job = make_job(session, concept, kind="synthesize", status="running")
    for i in range(2):
        make_artifact(session, concept, job, "image", i)
        make_artifact(session, concept, job, "preview", i)
    images = [{"index": i, "seed": 7 + i, "in_box_share": {"<asset0>": 0.5}} for i in range(2)]
    jobs.finish(session, job_id=job.id, status="succeeded", result={"images": images})
    session.commit()
    body = client.get(f"/v1/jobs/{job.id}").json()
    got = body["result"]["images"]
    assert [(i["index"], i["seed"]) for i in got] == [(0, 7), (1, 8)]
    assert all(i["url"] and i["preview_url"] for i in got)
    assert [i["in_box_share"] for i in got] == [{"<asset0>": 0.5}] * 2  # the CLI's name too
    parsed = models.JobResult.model_validate(body["result"]).images or []
    assert [i.in_box_share for i in parsed] == [{"<asset0>": 0.5}] * 2  # as the client reads it
    older = {"index": 0, "seed": 1, "diagnostics": {"<asset0>": 0.2}}  # before the rename
    assert models.Image.model_validate(older).in_box_share == {"<asset0>": 0.2}
    finished = make_job(session, concept, kind="synthesize", status="running")
    jobs.finish(session, job_id=finished.id, status="succeeded", result={"images": [older]})
    session.commit()
    stored = client.get(f"/v1/jobs/{finished.id}").json()["result"]["images"]
    assert stored[0]["in_box_share"] == {"<asset0>": 0.2}  # a result recorded before it too
    assert body["progress"]["fraction"] == 1.0 and body["finished_at"]


def test_listing_uses_a_fixed_number_of_queries(client: TestClient, session: Session) -> None:
    def count_queries(url: str) -> int:
        engine = client.app.state.mifo.engine  # type: ignore[attr-defined]
        seen: list[str] = []
        # Not this listing: the webhook sender polling in the background, the API key lookup.
        listener = lambda *a, **k: _other(a[2]) or seen.append(a[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            assert client.get(url).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        return len(seen)

    def add(n: int) -> None:
        for _ in range(n):
            concept = make_concept(session)
            learn = make_job(session, concept, status="running")
            make_artifact(session, concept, learn, "attention", 0)
            jobs.finish(session, job_id=learn.id, status="succeeded", result={"concept_id": "x"})
            synth = make_job(session, concept, kind="synthesize", status="running")
            make_artifact(session, concept, synth, "image", 0)
            jobs.finish(session, job_id=synth.id, status="succeeded", result={"images": []})
        session.commit()

    add(2)
    few = (count_queries("/v1/jobs?limit=100"), count_queries("/v1/concepts?limit=100"))
    add(6)
    many = (count_queries("/v1/jobs?limit=100"), count_queries("/v1/concepts?limit=100"))
    assert few == many


def _other(statement: str) -> bool:
    return "webhook_deliveries" in statement or "api_keys" in statement


def test_a_running_jobs_progress_carries_its_latest_loss_terms(
    client: TestClient, session: Session
) -> None:
    job = make_job(session, make_concept(session), status="running")
    assert jobs.record_progress(
        session,
        job_id=job.id,
        phase="phase1",
        step=3,
        total=10,
        fraction=0.3,
        eta_seconds=7.0,
        losses={"rec": 0.25, "reward": -0.5},
    )
    session.commit()
    body = client.get(f"/v1/jobs/{job.id}").json()
    assert body["progress"]["losses"] == {"rec": 0.25, "reward": -0.5}
    assert models.Job.model_validate(body).progress.losses == {"rec": 0.25, "reward": -0.5}
    jobs.record_progress(
        session, job_id=job.id, phase="diagnostics", step=1, total=1, fraction=1.0, eta_seconds=0
    )
    session.commit()
    assert client.get(f"/v1/jobs/{job.id}").json()["progress"]["losses"] is None
