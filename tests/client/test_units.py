"""The client's logic without a server (httpx.MockTransport): retries and their pauses,
idempotency keys, problems, configuration, the event stream parser, the polling fallback,
an interrupt during a wait."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from mifo_client import (
    AsyncClient,
    Client,
    InvalidRequestError,
    Job,
    JobNotSucceededError,
    MifoConnectionError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
    WaitTimeoutError,
)
from mifo_client._core import Retry, SseParser

JOB_ID = "0b7d5a52-3c6e-4f1a-8e0f-5d2f7f9c4e21"
CONCEPT_ID = "6f1c2f5e-8d3b-4c39-9a57-1f0e6c2b7a10"


def job(status: str = "queued", fraction: float | None = None, **more: object) -> dict:
    return {
        "id": JOB_ID,
        "kind": "synthesize",
        "status": status,
        "concept_id": CONCEPT_ID,
        "progress": {
            "phase": None,
            "step": None,
            "total": None,
            "fraction": fraction,
            "eta_seconds": None,
        },
        "cancel_requested": False,
        "attempts": 1,
        "request": {},
        "error": None,
        "result": None,
        "created_at": "2025-01-01T12:30:00Z",
        "started_at": None,
        "finished_at": None,
        "links": {},
        "a_field_from_a_newer_server": 1,
        **more,
    }


def problem(status: int, code: str, **more: object) -> httpx.Response:
    body = {"type": f"/problems/{code}", "title": code, "status": status, "detail": code, **more}
    headers = {"content-type": "application/problem+json"}
    if status in (429, 503):
        headers["retry-after"] = "0.2"
    return httpx.Response(status, json=body, headers=headers)


def client(handler: Callable[[httpx.Request], httpx.Response], **options: object) -> Client:
    return Client("http://mifo.test", transport=httpx.MockTransport(handler), **options)  # type: ignore[arg-type]


def test_a_503_is_retried_after_retry_after_with_the_same_idempotency_key() -> None:
    seen: list[tuple[float, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((time.monotonic(), request.headers.get("idempotency-key")))
        if len(seen) < 3:
            return problem(503, "database_unavailable")
        return httpx.Response(202, json=job())

    with client(handler, backoff=5) as c:
        found = c.synthesize(CONCEPT_ID, "a photo of <asset0>", {"<asset0>": [0, 0, 1, 1]})
    assert found.id == JOB_ID and found.a_field_from_a_newer_server == 1  # type: ignore[attr-defined]
    assert len(seen) == 3 and len({key for _, key in seen}) == 1 and seen[0][1]
    assert seen[1][0] - seen[0][0] >= 0.19 and seen[2][0] - seen[1][0] >= 0.19  # not backoff=5


def test_each_post_gets_its_own_key() -> None:
    keys: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("idempotency-key"))
        return httpx.Response(202, json=job("canceled"))

    with client(handler) as c:
        c.cancel(JOB_ID)
        c.cancel(JOB_ID)
    assert keys[0] and keys[1] and keys[0] != keys[1]


def test_retries_are_bounded_and_the_last_answer_is_raised() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return problem(503, "broker_unavailable", fix="retry later")

    with client(handler, retries=2) as c, pytest.raises(ServiceUnavailableError) as info:
        c.job(JOB_ID)
    assert len(calls) == 3 and info.value.status == 503 and info.value.fix == "retry later"
    assert info.value.retry_after == pytest.approx(0.2)


def test_connection_errors_are_retried_then_raised_as_mifo_connection_error() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    with client(handler, retries=2, backoff=0.01) as c, pytest.raises(MifoConnectionError):
        c.job(JOB_ID)
    assert len(calls) == 3


def test_a_key_still_in_use_is_retried_other_refusals_are_not() -> None:
    answers = [problem(409, "idempotency_key_in_use"), httpx.Response(202, json=job("canceled"))]
    with client(lambda r: answers.pop(0), backoff=0.01) as c:
        assert c.cancel(JOB_ID).status == "canceled"
    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return problem(422, "invalid_layout", field="boxes[<asset0>]", fix="use fractions")

    with client(refuse) as c, pytest.raises(InvalidRequestError) as info:
        c.synthesize(CONCEPT_ID, "p", {"<asset0>": [0, 0, 2, 1]})
    assert len(calls) == 1 and info.value.field == "boxes[<asset0>]"
    assert info.value.fix == "use fractions" and info.value.type == "/problems/invalid_layout"


def test_an_answer_without_problem_json_still_raises_by_status() -> None:
    broken = client(lambda r: httpx.Response(500, text="Internal Server Error"), retries=0)
    with broken as c, pytest.raises(ServerError) as info:
        c.job(JOB_ID)
    assert info.value.status == 500 and "Internal" in info.value.detail


def test_retry_pauses_back_off_exponentially_and_honour_an_http_date() -> None:
    retry = Retry(retries=4, backoff=1, max_backoff=3)
    assert all(0 <= retry.pause(0, None) <= 1 for _ in range(50))  # type: ignore[operator]
    assert max(retry.pause(3, None) for _ in range(200)) <= 3  # type: ignore[type-var]
    assert retry.pause(4, None) is None
    later = email.utils.formatdate(time.time() + 10, usegmt=True)
    answer = httpx.Response(429, headers={"retry-after": later})
    assert 8 <= retry.pause(0, answer) <= 10  # type: ignore[operator]
    assert retry.pause(0, httpx.Response(400)) is None


def test_configuration_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.path] = request.headers.get("authorization")
        if request.url.path.startswith("/v1/artifacts/"):
            return httpx.Response(200, content=b"\x89PNG\r\n\x1a\n...")
        image = {
            "index": 0,
            "seed": 0,
            "url": "http://mifo.test/v1/artifacts/a?signature=s",
            "preview_url": None,
        }
        return httpx.Response(200, json=job("succeeded", 1.0, result={"images": [image]}))

    monkeypatch.setenv("MIFO_API_URL", "http://mifo.test/")
    monkeypatch.setenv("MIFO_API_KEY", "mifo_secret")
    with Client(transport=httpx.MockTransport(handler)) as c:
        assert c.base_url == "http://mifo.test"
        c.job(JOB_ID)
    assert seen[f"/v1/jobs/{JOB_ID}"] == "Bearer mifo_secret"
    monkeypatch.delenv("MIFO_API_URL")
    monkeypatch.delenv("MIFO_API_KEY")
    with Client() as default:
        assert default.base_url == "http://127.0.0.1:8000" and default.settings.api_key is None


def test_downloads_go_without_the_api_key_and_need_a_succeeded_job(tmp_path) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, str | None] = {}
    state = {"status": "succeeded"}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.path] = request.headers.get("authorization")
        if request.url.path.startswith("/v1/artifacts/"):
            return httpx.Response(200, content=b"\x89PNG\r\n\x1a\n...")
        image = {
            "index": 0,
            "seed": 0,
            "url": "http://mifo.test/v1/artifacts/a?signature=s",
            "preview_url": "http://mifo.test/v1/artifacts/b?signature=s",
        }
        return httpx.Response(200, json=job(state["status"], result={"images": [image]}))

    with client(handler, api_key="k") as c:
        saved = c.download(JOB_ID, tmp_path / "out", previews=True)
        assert [p.name for p in saved] == [f"{JOB_ID}_image_00.png", f"{JOB_ID}_preview_00.png"]
        assert seen[f"/v1/jobs/{JOB_ID}"] == "Bearer k" and seen["/v1/artifacts/a"] is None
        state["status"] = "failed"
        with pytest.raises(JobNotSucceededError):
            c.download(JOB_ID, tmp_path)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in saved]


def test_the_event_parser_joins_lines_and_skips_comments() -> None:
    parser = SseParser()
    lines = [": ping", "event: status", 'data: {"a":', "data: 1}", "id: 7", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert len(events) == 1 and events[0].event == "status" and events[0].id == "7"
    assert json.loads(events[0].data) == {"a": 1}
    assert parser.feed("") is None


def stream(*events: tuple[str, dict]) -> bytes:
    return "".join(
        f"event: {k}\ndata: {json.dumps(d)}\nid: {i}\n\n" for i, (k, d) in enumerate(events)
    ).encode()


def test_wait_follows_the_stream_and_reports_each_change_once() -> None:
    body = stream(
        ("status", job("running")),
        ("progress", job("running", 0.5)),
        ("progress", job("running", 0.5)),
        ("status", job("succeeded", 1.0)),
    )
    headers = {"content-type": "text/event-stream"}
    reported: list[float | None] = []
    with client(lambda r: httpx.Response(200, content=body, headers=headers)) as c:
        done = c.wait(JOB_ID, on_progress=lambda j: reported.append(j.progress.fraction))
    assert done.succeeded and reported == [None, 0.5, 1.0]


def test_wait_reports_a_queued_job_moving_up_but_not_its_estimate_drifting() -> None:
    def queued(position: int, at: str) -> dict:
        place = {"position": position, "ahead": position - 1, "estimated_start_at": at}
        return job("queued", queue=place | {"estimated_start_seconds": 1.0})

    body = stream(
        ("status", queued(3, "2025-01-01T12:30:10Z")),
        ("progress", queued(3, "2025-01-01T12:30:11Z")),  # the same place, a later estimate
        ("progress", queued(2, "2025-01-01T12:30:12Z")),
        ("progress", queued(1, "2025-01-01T12:30:13Z")),
        ("status", job("succeeded", 1.0)),
    )
    headers = {"content-type": "text/event-stream"}
    reported: list[int | None] = []
    with client(lambda r: httpx.Response(200, content=body, headers=headers)) as c:
        c.wait(JOB_ID, on_progress=lambda j: reported.append(j.queue and j.queue.position))
    assert reported == [3, 2, 1, None]


def test_a_delete_whose_answer_was_lost_is_done_when_the_retry_finds_nothing() -> None:
    tries: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tries.append(request.method)
        if len(tries) == 1:  # the service deleted it; the answer never came back
            raise httpx.ReadError("connection reset", request=request)
        return problem(404, "not_found")

    with client(handler, backoff=0.01) as c:
        assert c.delete_concept(CONCEPT_ID) is None
    assert tries == ["DELETE", "DELETE"]
    # On the first try, a 404 is the caller's mistake: a concept that never was; so it is
    # after tries that were answered and so not carried out (a connection refused, a 429).
    for before in ([], [httpx.ConnectError("refused")], [problem(429, "rate_limited")]):
        answers = [*before, problem(404, "not_found")]

        def refused(request: httpx.Request, answers: list = answers) -> httpx.Response:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        with client(refused, backoff=0.01) as c, pytest.raises(NotFoundError):
            c.delete_concept(CONCEPT_ID)
        assert not answers


def test_wait_polls_when_the_stream_is_refused_or_ends_early() -> None:
    polls = [job("running", 0.2), job("running", 0.2), job("succeeded", 1.0)]
    early = stream(("status", job("running")))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=early, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=polls.pop(0))

    reported: list[str] = []
    with client(handler, poll_interval=0.01) as c:
        done = c.wait(JOB_ID, on_progress=lambda j: reported.append(j.status))
    assert done.succeeded and reported == ["running", "running", "succeeded"] and not polls
    with client(
        lambda r: (
            httpx.Response(502)
            if r.url.path.endswith("/events")
            else httpx.Response(200, json=job("canceled"))
        ),
        retries=0,
    ) as c:
        assert c.wait(JOB_ID).status == "canceled"


def test_wait_gives_up_at_its_timeout_and_raises_for_a_deleted_job() -> None:
    def running(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(503)
        return httpx.Response(200, json=job("running"))

    with client(running, poll_interval=0.05, retries=0) as c:
        started = time.monotonic()
        with pytest.raises(WaitTimeoutError):
            c.wait(JOB_ID, timeout=0.3)
        assert time.monotonic() - started < 2
    body = stream(("status", job("running")), ("deleted", {"id": JOB_ID}))
    headers = {"content-type": "text/event-stream"}
    deleted = client(lambda r: httpx.Response(200, content=body, headers=headers))
    with deleted as c, pytest.raises(NotFoundError):
        c.wait(JOB_ID)


class Interrupted(httpx.SyncByteStream, httpx.AsyncByteStream):
    """An event stream that sends `body`, then raises `interrupt` where the next read would
    wait: Ctrl-C (or a cancelled task) in the middle of a wait."""

    def __init__(self, body: bytes, interrupt: BaseException) -> None:
        self.body, self.interrupt = body, interrupt

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        raise self.interrupt

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body
        raise self.interrupt


def interrupted_stream(interrupt: BaseException, polls: list[str]) -> httpx.MockTransport:
    """The job's stream breaks off with `interrupt`; a poll, which must not come, is noted."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            headers = {"content-type": "text/event-stream"}
            broken = Interrupted(stream(("status", job("running"))), interrupt)
            return httpx.Response(200, stream=broken, headers=headers)
        polls.append(request.url.path)
        return httpx.Response(200, json=job("running"))

    return httpx.MockTransport(handler)


def test_ctrl_c_in_the_event_stream_leaves_wait_and_is_no_reason_to_poll() -> None:
    polls: list[str] = []
    reported: list[str] = []
    transport = interrupted_stream(KeyboardInterrupt(), polls)
    client = Client("http://mifo.test", transport=transport, poll_interval=0.01)
    with client as c, pytest.raises(KeyboardInterrupt):
        c.wait(JOB_ID, timeout=5, on_progress=lambda j: reported.append(j.status))
    assert reported == ["running"] and polls == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), asyncio.CancelledError()])
def test_the_async_wait_leaves_on_ctrl_c_or_cancellation_too(interrupt: BaseException) -> None:
    """asyncio.run turns Ctrl-C into the main task's cancellation: neither may end in polls."""
    polls: list[str] = []

    async def run() -> None:
        transport = interrupted_stream(interrupt, polls)
        async with AsyncClient("http://mifo.test", transport=transport, poll_interval=0.01) as c:
            await c.wait(JOB_ID, timeout=5)

    with pytest.raises(type(interrupt)):
        asyncio.run(run())
    assert polls == []


def test_the_async_client_follows_the_stream_with_a_coroutine_and_raises_its_refusal() -> None:
    body = stream(("status", job("running", 0.5)), ("status", job("succeeded", 1.0)))
    reported: list[float | None] = []

    async def report(found: Job) -> None:
        await asyncio.sleep(0)
        reported.append(found.progress.fraction)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        raise AssertionError(f"no poll expected: {request.url}")

    def refused(request: httpx.Request) -> httpx.Response:
        return problem(404, "not_found")  # the stream's refusal is the one polling would meet

    async def run() -> Job:
        async with AsyncClient("http://mifo.test", transport=httpx.MockTransport(handler)) as c:
            done = await c.wait(JOB_ID, on_progress=report)
        async with AsyncClient("http://mifo.test", transport=httpx.MockTransport(refused)) as c:
            with pytest.raises(NotFoundError):
                await c.wait(JOB_ID)
        return done

    assert asyncio.run(run()).succeeded and reported == [0.5, 1.0]


def test_every_problem_type_of_the_service_raises_one_class_of_its_status() -> None:
    """The client's table of problem types is the service's catalogue (core/problems.py)."""
    from core.problems import TYPES
    from mifo_client import errors

    assert set(errors.BY_TYPE) == {t.code for t in TYPES}
    for t in TYPES:
        if t.status is not None:
            assert errors.BY_TYPE[t.code] is errors.error_class(t.status), t.code
    # The type decides where the service gave one, whatever the status.
    assert errors.error_class(500, "/problems/rate_limited") is errors.RateLimitedError
    assert errors.error_class(418, "/problems/no_such_type") is errors.MifoError
