"""The client against a real `mifo serve --base-model tiny`: learn, wait with progress,
synthesise with boxes, download; the async client; retried POSTs; problems as exceptions."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from mifo_client import (
    AsyncClient,
    Client,
    ConceptCreated,
    ConflictError,
    InvalidRequestError,
    Job,
    MifoError,
    NotFoundError,
)
from tests.helpers.serve import BOXES, PROMPT, QUICK

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"
WAIT = 600  # seconds: generous, for a loaded 2-core machine


@pytest.fixture(scope="module")
def learned(service: str, scene: tuple[Path, list[Path]]) -> tuple[ConceptCreated, Job, list[Job]]:
    image, masks = scene
    seen: list[Job] = []
    with Client(service) as client:
        # Long enough that the stream sees it part-way through (a 2-step run can end between
        # two progress writes).
        options = {**QUICK, "phase1_steps": 30}
        created = client.learn(image, masks, names=["left blob", "right blob"], options=options)
        job = client.wait(created, timeout=WAIT, on_progress=seen.append)
    return created, job, seen


def _jobs_total(client: Client) -> int:
    return client.jobs_page(limit=1).total


def test_learn_then_wait_reports_progress_until_the_job_succeeds(
    learned: tuple[ConceptCreated, Job, list[Job]],
) -> None:
    created, job, seen = learned
    assert created.concept.status == "pending" and created.job.kind == "learn"
    assert job.id == created.job.id and job.succeeded, job.error
    concept = job.result.concept if job.result else None
    assert concept is not None and concept.status == "ready"
    assert [t.name for t in concept.tokens] == ["left blob", "right blob"]
    statuses = [j.status for j in seen]
    assert "running" in statuses and statuses[-1] == "succeeded"
    fractions = [j.progress.fraction for j in seen if j.progress.fraction is not None]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(0 <= f < 1 for f in fractions), "no progress was reported before the end"


def test_synthesize_with_boxes_wait_and_download_unique_pngs(
    service: str, learned: tuple[ConceptCreated, Job, list[Job]], tmp_path: Path
) -> None:
    created, learn_job, _ = learned
    with Client(service) as client:
        first = client.synthesize(created, PROMPT, BOXES, num_images=2, steps=1, seed=3)
        second = client.synthesize(created.concept.id, PROMPT, BOXES, num_images=1, steps=1)
        assert first.kind == "synthesize" and first.request["boxes"] == BOXES
        done = [client.wait(j, timeout=WAIT) for j in (first, second)]
        assert all(j.succeeded for j in done), [j.error for j in done]
        files = client.download(done[0], tmp_path) + client.download(done[1], tmp_path)
        maps = client.download(learn_job, tmp_path / "maps")
    assert [p.name for p in files] == [
        f"{first.id}_image_00.png",
        f"{first.id}_image_01.png",
        f"{second.id}_image_00.png",
    ]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name for p in files)
    assert [p.name for p in maps] == [f"{learn_job.id}_attention_{i:02d}.png" for i in (0, 1)]
    for path in files + maps:
        assert path.read_bytes().startswith(PNG), path


def test_a_box_outside_the_frame_raises_422_with_field_and_fix(
    service: str, learned: tuple[ConceptCreated, Job, list[Job]]
) -> None:
    created = learned[0]
    with Client(service) as client, pytest.raises(InvalidRequestError) as info:
        client.synthesize(created, "a photo of <asset0>", {"<asset0>": [0.1, 0.2, 1.5, 0.8]})
    error = info.value
    assert error.status == 422 and isinstance(error, MifoError)
    assert error.type == "/problems/invalid_layout"
    assert error.field == "boxes[<asset0>]" and error.fix and "between 0 and 1" in error.fix
    assert error.title and error.detail and "outside" in error.detail
    assert "boxes[<asset0>]" in str(error)


def test_missing_jobs_are_404_and_cancelling_a_finished_job_is_409(
    service: str, learned: tuple[ConceptCreated, Job, list[Job]]
) -> None:
    with Client(service) as client:
        with pytest.raises(NotFoundError) as missing:
            client.job(uuid.uuid4())
        assert missing.value.status == 404 and missing.value.fix
        with pytest.raises(ConflictError) as finished:
            client.cancel(learned[1])
        assert finished.value.status == 409


def test_lists_follow_next_over_every_page(
    service: str, learned: tuple[ConceptCreated, Job, list[Job]]
) -> None:
    with Client(service) as client:
        total = _jobs_total(client)
        every = list(client.jobs(page_size=1))
        assert total >= 2 and len(every) == total == len({j.id for j in every})
        learns = list(client.jobs("succeeded", kind="learn", page_size=1))
        assert learned[1].id in {j.id for j in learns}
        assert all(j.status == "succeeded" and j.kind == "learn" for j in learns)
        concepts = list(client.concepts(page_size=1))
        assert learned[0].concept.id in {c.id for c in concepts}
        assert client.concept(learned[0]).status == "ready"


class DropFirstPostAnswer(httpx.BaseTransport):
    """Forwards every request to the server; the first POST's answer is then lost, as if
    the connection broke after the server handled it."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.posts: list[tuple[str | None, int]] = []  # (Idempotency-Key, status)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method != "POST":
            return response
        response.read()
        self.posts.append((request.headers.get("idempotency-key"), response.status_code))
        if len(self.posts) == 1:
            response.close()
            raise httpx.ReadError("connection reset after the answer was sent", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_retried_synthesis_post_returns_the_same_job_and_makes_one(
    service: str, learned: tuple[ConceptCreated, Job, list[Job]]
) -> None:
    transport = DropFirstPostAnswer()
    with Client(service) as plain, Client(service, transport=transport, backoff=0.05) as client:
        before = _jobs_total(plain)
        job = client.synthesize(learned[0], PROMPT, BOXES, steps=1)
        assert _jobs_total(plain) == before + 1
        (key, first), (again, second) = transport.posts
        assert key and again == key and first == 202 and second == 202
        assert plain.job(job).id == job.id
        assert plain.jobs_page(limit=1).data[0].id == job.id
        assert client.wait(job, timeout=WAIT).succeeded


def test_a_retried_learn_post_returns_the_same_concept_and_job(
    service: str, scene: tuple[Path, list[Path]]
) -> None:
    """The uploads are read once, so the retry sends the same bytes (file objects too)."""
    image, masks = scene
    transport = DropFirstPostAnswer()
    with Client(service) as plain, Client(service, transport=transport, backoff=0.05) as client:
        jobs, concepts = _jobs_total(plain), plain.concepts_page(limit=1).total
        with image.open("rb") as f:
            created = client.learn(f, [m.read_bytes() for m in masks], options=QUICK)
        assert _jobs_total(plain) == jobs + 1
        assert plain.concepts_page(limit=1).total == concepts + 1
        assert [k for k, _ in transport.posts][0] == transport.posts[1][0]
        canceled = plain.cancel(created)
        assert canceled.id == created.job.id
        assert canceled.status == "canceled" or canceled.cancel_requested
        plain.delete_concept(created)
        with pytest.raises(NotFoundError):
            plain.concept(created)


class NoEventStream(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            self.refused += 1
            raise httpx.ConnectError("no stream here", request=request)
        return self.inner.handle_request(request)


def test_wait_polls_when_the_event_stream_fails(
    service: str, learned: tuple[ConceptCreated, Job, list[Job]]
) -> None:
    transport = NoEventStream()
    seen: list[str] = []
    with Client(service, transport=transport, poll_interval=0.2, retries=0) as client:
        job = client.synthesize(learned[0], PROMPT, BOXES, steps=1)
        done = client.wait(job, timeout=WAIT, on_progress=lambda j: seen.append(j.status))
    assert transport.refused == 1 and done.succeeded and seen[-1] == "succeeded"


def test_the_async_client_learns_synthesises_and_downloads(
    service: str, scene: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    async def flow() -> tuple[list[Any], Job, list[Path]]:
        seen: list[Any] = []

        async def report(job: Job) -> None:
            seen.append(job.progress.fraction)

        async with AsyncClient(service) as client:
            created = await client.learn(scene[0], scene[1], options=QUICK)
            learned = await client.wait(created, timeout=WAIT, on_progress=report)
            assert learned.succeeded, learned.error
            job = await client.synthesize(created, PROMPT, BOXES, steps=1)
            done = await client.wait(job, timeout=WAIT)
            files = await client.download(done, tmp_path)
            listed = [j.id async for j in client.jobs(kind="synthesize", page_size=1)]
            assert done.id in listed
            return seen, done, files

    seen, done, files = asyncio.run(flow())
    assert done.succeeded and 1.0 in seen
    assert [p.name for p in files] == [f"{done.id}_image_00.png"]
    assert files[0].read_bytes().startswith(PNG)


def test_prefer_wait_answers_with_the_finished_job(
    service: str, scene: tuple[Path, list[Path]], learned: tuple[ConceptCreated, Job, list[Job]]
) -> None:
    image, masks = scene
    with Client(service) as client:
        created = client.learn(image, masks, options=QUICK, wait=60)
        assert created.job.done, created.job.status  # no wait() needed
        assert created.job.succeeded and created.concept.status == "ready"
        done = client.synthesize(created, PROMPT, BOXES, num_images=1, steps=1, wait=60)
        assert done.succeeded and done.result and done.result.images
        # A wait shorter than the job: the job as it was then, to follow with wait().
        slow = client.synthesize(created, PROMPT, BOXES, num_images=4, steps=30, wait=0)
        assert not slow.done
        assert client.wait(slow, timeout=WAIT).succeeded
        with pytest.raises(ValueError, match="0 to 60"):
            client.synthesize(created, PROMPT, BOXES, wait=61)


def test_the_async_client_waits_through_prefer_too(
    service: str, learned: tuple[ConceptCreated, Job, list[Job]]
) -> None:
    async def run() -> Job:
        async with AsyncClient(service) as client:
            return await client.synthesize(learned[0], PROMPT, BOXES, steps=1, wait=60)

    assert asyncio.run(run()).succeeded
