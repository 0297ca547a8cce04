"""What a newcomer meets, over real HTTP against `mifo serve --base-model tiny` (real
processes, the Python client where it applies): plain generation without boxes, a concept's
list of syntheses, a queued job's place while another runs, 415 for the wrong content type,
409 for a concept of another base model, a failed concept's reason, and a real webhook
delivery verified with the client's helper."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from mifo_client import Client, Concept, ConflictError, Job, verify_webhook
from tests.helpers.serve import BOXES, PROMPT, QUICK, serve
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow
WAIT = 600  # seconds: generous, for a loaded 2-core machine


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on loopback keeping each delivery's headers and raw body."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.deliveries.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The service and its data folder; webhooks may go to loopback (the test's receiver)."""
    data = tmp_path_factory.mktemp("live")
    with serve(data, MIFO_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.0/8"]') as base:
        yield base, data


@pytest.fixture(scope="module")
def ready(live: tuple[str, Path], scene: tuple[Path, list[Path]]) -> Concept:
    with Client(live[0]) as client:
        created = client.learn(*scene, names=["left blob", "right blob"], options=QUICK)
        job = client.wait(created, timeout=WAIT)
        assert job.succeeded, job.error
        return client.concept(created.concept)


def test_plain_generation_needs_no_boxes_and_the_concept_lists_its_syntheses(
    live: tuple[str, Path], ready: Concept
) -> None:
    base, _ = live
    with Client(base) as client:
        job = client.synthesize(ready, "a photo of <asset0>", steps=2)  # no boxes
        done = client.wait(job, timeout=WAIT)
    assert done.succeeded and done.result and done.result.images
    assert done.result.images[0].in_box_share == {}  # no box: no share to report
    listed = httpx.get(base + ready.links["syntheses"])
    assert listed.status_code == 200, listed.text
    assert job.id in [j["id"] for j in listed.json()["data"]]


def test_a_queued_job_shows_its_place_while_another_runs(
    live: tuple[str, Path], ready: Concept
) -> None:
    with Client(live[0]) as client:
        first = client.synthesize(ready, PROMPT, BOXES, steps=150)  # seconds on one worker
        # Polled gently: the tenant's requests share the rate limit (40 in any 2 s).
        wait_until(lambda: client.job(first).status == "running", WAIT, interval=0.2)
        second = client.synthesize(ready, PROMPT, BOXES, steps=2)
        assert second.status == "queued" and second.queue is not None
        assert (second.queue.position, second.queue.ahead) == (1, 1)  # the running one ahead
        polled = client.job(second)
        assert polled.queue is not None and polled.queue.ahead == 1
        client.cancel(first)
        seen: list[Job] = []
        done = client.wait(second, timeout=WAIT, on_progress=seen.append)
    assert done.succeeded and done.queue is None
    assert seen[-1].succeeded


def test_the_wrong_content_type_is_415_naming_the_one_to_send(
    live: tuple[str, Path], ready: Concept
) -> None:
    base, _ = live
    as_json = httpx.post(f"{base}/v1/concepts", json={"image": "scene.png"})
    assert as_json.status_code == 415, as_json.text
    assert as_json.json()["field"] == "Content-Type"
    assert "multipart/form-data" in as_json.json()["fix"]
    as_form = httpx.post(f"{base}/v1/concepts/{ready.id}/syntheses", data={"prompt": "a cat"})
    assert as_form.status_code == 415, as_form.text
    assert "application/json" in as_form.json()["fix"]


def test_a_concept_of_another_base_model_is_409_naming_both(
    live: tuple[str, Path], ready: Concept
) -> None:
    """The concept row says it was learned on another model (as after a server changed its
    MIFO_BASE_MODEL): the request is refused at once, before any job."""
    base, data = live
    db = sqlite3.connect(data / "mifo.db")
    key = uuid.UUID(ready.id).hex
    try:
        with db:
            db.execute("UPDATE concepts SET base_model = 'sd21-random' WHERE id = ?", (key,))
        with Client(base) as client:
            before = client.jobs_page(limit=1).total
            with pytest.raises(ConflictError) as refused:
                client.synthesize(ready, PROMPT, BOXES)
            assert client.jobs_page(limit=1).total == before
    finally:
        with db:
            db.execute("UPDATE concepts SET base_model = 'tiny' WHERE id = ?", (key,))
        db.close()
    problem = refused.value
    assert problem.type.endswith("base_model_mismatch") and problem.status == 409
    assert "'sd21-random'" in str(problem) and "'tiny'" in str(problem)


def test_a_real_webhook_delivery_verifies_with_the_clients_helper(
    live: tuple[str, Path], ready: Concept
) -> None:
    receiver = Receiver()
    try:
        with Client(live[0]) as client:
            secret = client.webhook_secret()
            job = client.synthesize(
                ready,
                PROMPT,
                BOXES,
                steps=2,
                webhook_url=receiver.url,
                webhook_events=["completed"],
            )
            assert client.wait(job, timeout=WAIT).succeeded
        wait_until(lambda: receiver.deliveries, 60)
    finally:
        receiver.shutdown()
        receiver.server_close()
    headers, body = receiver.deliveries[0]
    event = verify_webhook(secret, headers, body)
    assert event["type"] == "job.completed" and event["data"]["id"] == job.id
    with pytest.raises(ValueError):
        verify_webhook(secret, headers, body.replace(b"succeeded", b"failed"))
    assert json.loads(body) == event


def test_a_failed_concept_carries_the_reason(
    tmp_path: Path, scene: tuple[Path, list[Path]]
) -> None:
    """A learning job that runs past its time limit fails; the concept says why too."""
    with serve(tmp_path / "data", MIFO_LEARN_TIME_LIMIT="0.5") as base, Client(base) as client:
        created = client.learn(*scene, options={**QUICK, "phase1_steps": 400})
        job = client.wait(created, timeout=WAIT)
        concept = client.concept(created.concept)
    assert job.status == "failed" and job.error is not None and job.error.type == "timeout"
    assert concept.status == "failed" and concept.error == job.error
