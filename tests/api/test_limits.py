"""Server limits: each one a setting, each breach a problem naming the field and the fix."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import time
import zlib
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from api.main import create_app
from core.settings import Settings
from tests.helpers.db import bearer
from tests.helpers.factories import make_concept, make_job, png, scene
from tests.helpers.servers import free_port
from tests.helpers.wait import wait_until

BOX = {"<asset0>": [0.1, 0.1, 0.5, 0.5]}


@pytest.fixture
def db_url(request: pytest.FixtureRequest) -> str:
    """PostgreSQL, unless a test asks for another (`indirect` parametrisation)."""
    return request.getfixturevalue(f"{getattr(request, 'param', 'postgres')}_url")


def _post(client: TestClient, image: bytes, masks: list[bytes], name: str = "s.png", **form: str):  # type: ignore[no-untyped-def]
    files = [("image", (name, image, "image/png"))]
    files += [("masks", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    return client.post("/v1/concepts", files=files, data=form)


def _bomb(width: int, height: int) -> bytes:
    """A PNG header claiming width x height pixels, followed by a few bytes of data only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _problem(r, status: int, field: str) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["field"] == field and body["fix"], body
    return body


def _stored(session: Session) -> int:
    from sqlalchemy import func, select

    from core.models import Concept, Job

    return (session.scalar(select(func.count()).select_from(Concept)) or 0) + (
        session.scalar(select(func.count()).select_from(Job)) or 0
    )


def test_decompression_bombs_are_refused_from_the_header(
    client: TestClient, session: Session
) -> None:
    _, masks = scene()
    body = _problem(_post(client, _bomb(40000, 40000), masks), 422, "image")
    assert body["type"].endswith("image_too_large") and "MIFO_MAX_IMAGE_PIXELS" in body["fix"]
    # One sentence, one limit (the server's), whichever of Pillow's checks stopped it.
    assert body["detail"] == "image is 1600000000 pixels; the limit is 16777216 pixels."
    small = _problem(_post(client, scene()[0], [masks[0], _bomb(5000, 5000)]), 422, "masks[1]")
    assert small["detail"] == "masks[1] is 5000x5000 pixels; the limit is 16777216 pixels."
    assert _stored(session) == 0


def test_formats_are_judged_by_content_not_name(client: TestClient, session: Session) -> None:
    image, masks = scene()
    gif = io.BytesIO()
    Image.open(io.BytesIO(image)).convert("P").save(gif, format="GIF")
    body = _problem(_post(client, gif.getvalue(), masks, name="scene.png"), 422, "image")
    assert body["type"].endswith("unsupported_format")
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(image)).convert("RGB").save(jpeg, format="JPEG", quality=95)
    assert _post(client, jpeg.getvalue(), masks, name="scene.gif").status_code == 202


def test_instances_and_learning_steps(settings: Settings, session: Session, api_key: str) -> None:
    s = settings.model_copy(update={"max_instances": 1, "max_learn_steps": 10})
    image, masks = scene()
    with TestClient(create_app(s), headers=bearer(api_key)) as c:
        assert "MIFO_MAX_INSTANCES" in _problem(_post(c, image, masks), 422, "masks")["fix"]
        r = _post(c, image, masks[:1], options='{"phase1_steps": 5, "phase2_steps": 11}')
        _problem(r, 422, "options.phase2_steps")
    assert _stored(session) == 0


@pytest.mark.parametrize(
    ("field", "value", "setting"),
    [
        ("num_images", 3, "max_images_per_synthesis"),
        ("steps", 21, "max_synthesis_steps"),
        ("prompt", "<asset0> " + "x" * 40, "max_prompt_chars"),
    ],
)
def test_synthesis_limits(
    settings: Settings, session: Session, api_key: str, field: str, value: object, setting: str
) -> None:
    s = settings.model_copy(
        update={setting: {"max_prompt_chars": 30}.get(setting, 2 if field == "num_images" else 20)}
    )
    concept = make_concept(session)
    session.commit()
    body = {"prompt": "<asset0>", "boxes": BOX, field: value}
    with TestClient(create_app(s), headers=bearer(api_key)) as c:
        r = c.post(f"/v1/concepts/{concept.id}/syntheses", json=body)
        assert f"MIFO_{setting.upper()}" in _problem(r, 422, field)["fix"]
        body[field] = {"num_images": 2, "steps": 20, "prompt": "<asset0> x"}[field]
        assert c.post(f"/v1/concepts/{concept.id}/syntheses", json=body).status_code == 202


def test_upload_size_is_413(settings: Settings, api_key: str) -> None:
    s = settings.model_copy(update={"max_upload_bytes": 1024})
    image, masks = scene(size=256)
    with TestClient(create_app(s), headers=bearer(api_key)) as c:
        _problem(_post(c, image + b"\0" * 2048, masks), 413, "image")


def test_rate_limit_answers_429_with_retry_after(settings: Settings, api_key: str) -> None:
    s = settings.model_copy(update={"rate_limit_per_second": 0.5, "rate_limit_burst": 3})
    with TestClient(create_app(s), headers=bearer(api_key)) as c:
        codes = [c.get("/v1/jobs").status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = c.get("/v1/jobs")
        assert int(r.headers["retry-after"]) >= 1 and _problem(r, 429, "Authorization")
        # The status poll (which authenticates by itself) draws on the same bucket.
        missing = "00000000-0000-4000-8000-000000000000"
        r = c.get(f"/v1/jobs/{missing}")
        assert int(r.headers["retry-after"]) >= 1 and _problem(r, 429, "Authorization")
        assert c.get("/healthz").status_code == 200


def test_rate_limit_is_shared_by_api_processes_through_redis(
    settings: Settings, api_key: str
) -> None:
    url = "redis://127.0.0.1:6379/14"
    s = settings.model_copy(
        update={"rate_limit_per_second": 0.5, "rate_limit_burst": 4, "rate_limit_url": url}
    )
    try:
        with (
            TestClient(create_app(s), headers=bearer(api_key)) as a,
            TestClient(create_app(s), headers=bearer(api_key)) as b,
        ):
            codes = [(a if i % 2 else b).get("/v1/jobs").status_code for i in range(8)]
        assert codes.count(200) == 4 and codes[-1] == 429
    finally:
        redis.Redis.from_url(url).flushdb()


def test_active_jobs_per_tenant(settings: Settings, session: Session, api_key: str) -> None:
    s = settings.model_copy(update={"max_active_jobs": 2})
    concept = make_concept(session)
    make_job(session, concept, kind="synthesize", status="running")
    session.commit()
    body = {"prompt": "<asset0>", "boxes": BOX}
    with TestClient(create_app(s), headers=bearer(api_key)) as c:
        first = c.post(f"/v1/concepts/{concept.id}/syntheses", json=body)
        assert first.status_code == 202
        r = c.post(f"/v1/concepts/{concept.id}/syntheses", json=body)
        assert "MIFO_MAX_ACTIVE_JOBS" in _problem(r, 429, "tenant")["fix"]
        assert r.headers["retry-after"]
        c.post(f"/v1/jobs/{first.json()['id']}/cancel")
        assert c.post(f"/v1/concepts/{concept.id}/syntheses", json=body).status_code == 202


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_concurrent_posts_do_not_exceed_the_active_jobs(
    settings: Settings, session: Session, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Learning and synthesis POSTs at once, one job allowed: one is accepted, the rest 429."""
    import threading

    from sqlalchemy import func, select

    from core import jobs
    from core.models import Job

    s = settings.model_copy(update={"max_active_jobs": 1})
    concept = make_concept(session)
    session.commit()
    counted = jobs.count_active

    def slow_count(*a: object, **k: object) -> int:
        n = counted(*a, **k)  # type: ignore[arg-type]
        time.sleep(0.2)  # the race window under test: all count before any inserts, unless
        # they take turns
        return n

    monkeypatch.setattr(jobs, "count_active", slow_count)
    image, masks = scene()
    n = 8
    barrier = threading.Barrier(n)
    codes: list[int] = []
    with TestClient(create_app(s), headers=bearer(api_key)) as c:

        def post(i: int) -> None:
            barrier.wait()
            if i % 2:
                r = _post(c, image, masks)
            else:
                r = c.post(
                    f"/v1/concepts/{concept.id}/syntheses",
                    json={"prompt": "<asset0>", "boxes": BOX},
                )
            if r.status_code == 429:
                _problem(r, 429, "tenant")
            codes.append(r.status_code)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(codes) == [202] + [429] * (n - 1), codes
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_pil_refuses_bombs_everywhere(client: TestClient) -> None:
    assert Image.MAX_IMAGE_PIXELS == 4096 * 4096  # set from MIFO_MAX_IMAGE_PIXELS at start-up
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(_bomb(10000, 10000)))
    assert Image.open(io.BytesIO(png(Image.new("L", (8, 8))))).size == (8, 8)


def _bound(s: Settings) -> int:
    """The most a valid upload can be (api/http/bodylimit.py): every file at the limit, and 1 MiB."""
    return s.max_upload_bytes * (1 + s.max_instances) + (1 << 20)


def _counting(total: int, chunk: int = 64 << 10) -> tuple[Iterator[bytes], list[int]]:
    pulled: list[int] = []

    def body() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            pulled.append(min(chunk, total - sent))
            yield b"\0" * pulled[-1]
            sent += pulled[-1]

    return body(), pulled


MULTIPART = {"content-type": "multipart/form-data; boundary=b0und"}


def test_an_upload_larger_than_any_valid_one_is_413_unread(
    settings: Settings, session: Session, api_key: str
) -> None:
    s = settings.model_copy(update={"max_upload_bytes": 4096, "max_instances": 2})
    image, masks = scene()
    with TestClient(create_app(s), headers=bearer(api_key)) as c:
        body, pulled = _counting(_bound(s) + 1)
        headers = MULTIPART | {"content-length": str(_bound(s) + 1)}
        r = c.post("/v1/concepts", content=body, headers=headers)
        problem = _problem(r, 413, "body")
        assert problem["type"] == "/problems/file_too_large"
        assert "MIFO_MAX_UPLOAD_BYTES" in problem["fix"] and "4096" in problem["fix"]
        assert pulled == []  # answered from the header: not one byte of the body was read
        # The same body without a length (chunked) is cut off once past the bound.
        body, pulled = _counting(_bound(s) + 1)
        r = c.post("/v1/concepts", content=body, headers=MULTIPART)
        assert r.request.headers["transfer-encoding"] == "chunked"
        assert _problem(r, 413, "body")["type"] == "/problems/file_too_large"
        # A body under the bound reaches the per-file check; a valid upload works.
        assert _post(c, image, masks).status_code == 202
        big = image + b"\0" * 8192
        assert _problem(_post(c, big, masks), 413, "image")["type"].endswith("file_too_large")
    assert _stored(session) == 2  # the valid upload's concept and job only


def test_json_bodies_are_capped(client: TestClient, session: Session) -> None:
    concept = make_concept(session)
    session.commit()
    url = f"/v1/concepts/{concept.id}/syntheses"
    r = client.post(
        url, content=b"{" + b" " * (1 << 20) + b"}", headers={"content-type": "application/json"}
    )
    assert _problem(r, 413, "body")["type"] == "/problems/body_too_large"
    body = {"prompt": "<asset0>", "boxes": BOX}
    assert client.post(url, json=body).status_code == 202
    assert client.get(f"/v1/concepts/{concept.id}").status_code == 200


@contextlib.contextmanager
def _serving(s: Settings) -> Iterator[int]:
    """The app behind a real HTTP server (uvicorn) on a free port."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(s), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 30)
        assert server.started, "the server did not start"
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def _answer(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            more = sock.recv(65536)
            if not more:
                break
            data += more
    return data


def test_a_real_server_answers_413_before_the_body_arrives(
    settings: Settings, session: Session, api_key: str
) -> None:
    """uvicorn: a Content-Length over the bound is answered with no body sent at all; a
    chunked body is answered once past the bound, while the client has not finished."""
    s = settings.model_copy(update={"max_upload_bytes": 4096, "max_instances": 1})
    head = (
        "POST /v1/concepts HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {api_key}\r\nContent-Type: {MULTIPART['content-type']}\r\n"
    )
    part = (
        b'--b0und\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    with _serving(s) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"{head}Content-Length: {300 << 20}\r\n\r\n".encode())
            answer = _answer(sock)  # nothing of the 300 MiB was sent
        assert answer.startswith(b"HTTP/1.1 413 ") and b"MIFO_MAX_UPLOAD_BYTES" in answer
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            chunk = b"\0" * (64 << 10)
            for _ in range(_bound(s) // len(chunk) + 2):  # just past the bound; no last chunk
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            answer = _answer(sock)
        assert answer.startswith(b"HTTP/1.1 413 ") and b"/problems/file_too_large" in answer
    assert _stored(session) == 0
