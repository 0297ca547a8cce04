"""Webhooks with a real local receiver that verifies Standard Webhooks signatures."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from core.settings import Settings
from core.webhooks import UnsafeTarget, check_url
from tests.helpers.images import encode, make_scene
from tests.helpers.wait import wait_until
from worker.cache import ConceptCache
from worker.context import WorkerContext
from worker.runner import run_job

QUICK = '{"phase1_steps": 2, "phase2_steps": 1, "reward_steps": 1, "diagnostic_timesteps": [100]}'


@pytest.fixture
def db_url(postgres_url: str) -> str:
    return postgres_url


@pytest.fixture
def sender(settings: Settings) -> Iterator[None]:
    """The periodic duties, webhook delivery among them, as `mifo serve` runs them."""
    from core.duties import Duties, in_process

    with in_process(Duties.from_settings(settings)):
        yield


def verify(secret: str, headers: Any, body: bytes, tolerance: int = 300) -> dict:
    """What a receiver does (the README's snippet)."""
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(stamp)) > tolerance:
        raise ValueError("timestamp too old")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    sent = [s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")]
    if not any(hmac.compare_digest(expected, s) for s in sent):
        raise ValueError("bad signature")
    return json.loads(body)


@contextlib.contextmanager
def receiver(secret: str, fail_first: int = 0) -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP server: answers 500 `fail_first` times, then verifies and records."""
    got: list[dict] = []
    calls = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            calls["n"] += 1
            if calls["n"] <= fail_first:
                self.send_response(500)
            else:
                try:
                    event = verify(secret, self.headers, body)
                    got.append({"id": self.headers["webhook-id"], **event})
                    self.send_response(204)
                except ValueError:
                    self.send_response(401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def _learn(client: TestClient, **form: str) -> dict:
    image, masks = make_scene()
    files = [("image", ("scene.png", encode(image), "image/png"))]
    files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
    r = client.post("/v1/concepts", files=files, data={"options": QUICK, **form})
    assert r.status_code == 202, r.text
    return r.json()


def _deliveries(client: TestClient, job_id: str, n: int, timeout: float = 20) -> list[dict]:
    rows: list[dict] = []

    def settled() -> bool:
        rows[:] = client.get(f"/v1/jobs/{job_id}/webhooks").json()["data"]
        return len(rows) >= n and all(r["status"] != "pending" for r in rows)

    try:
        wait_until(settled, timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(rows) from None
    return rows


def test_signed_events_reach_a_real_receiver(
    client: TestClient, settings: Settings, session: Session, sender: None
) -> None:
    import mifo_engine as me

    secret = client.get("/v1/webhook-secret").json()["secret"]
    ctx = WorkerContext.from_settings(
        settings.model_copy(update={"progress_interval": 0.0, "webhook_progress_seconds": 0.0})
    )
    with receiver(secret) as (url, got):
        created = _learn(client, webhook_url=url)
        job_id = created["job"]["id"]
        base = me.load_base_model("tiny", device="cpu")
        assert run_job(ctx, uuid.UUID(job_id), lambda: base, ConceptCache(1)) == "succeeded"
        rows = _deliveries(client, job_id, 3)
    kinds = [r["event"] for r in rows]
    assert kinds[0] == "job.started" and kinds[-1] == "job.completed" and "job.progress" in kinds
    assert all(r["status"] == "delivered" and r["attempts"][0]["status_code"] == 204 for r in rows)
    assert sorted(e["id"] for e in got) == sorted(r["id"] for r in rows)
    done = next(e for e in got if e["type"] == "job.completed")
    assert done["data"]["id"] == job_id and done["data"]["status"] == "succeeded"


def test_failures_are_retried_with_backoff_and_recorded(
    client: TestClient, settings: Settings, sender: None
) -> None:
    secret = client.get("/v1/webhook-secret").json()["secret"]
    with receiver(secret, fail_first=2) as (url, got):
        created = _learn(client, webhook_url=url, webhook_events="completed")
        job_id = created["job"]["id"]
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202  # queued: completed
        (row,) = _deliveries(client, job_id, 1)
    assert row["status"] == "delivered" and [a["status_code"] for a in row["attempts"]] == [
        500,
        500,
        204,
    ]
    at = [datetime.fromisoformat(a["created_at"]) for a in row["attempts"]]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(at)]
    backoff = settings.webhook_backoff_seconds
    assert gaps[0] >= backoff * 0.9 and gaps[1] >= 2 * backoff * 0.9  # doubling delays
    assert got[0]["data"]["status"] == "canceled"


def test_attempts_are_bounded(settings: Settings, api_key: str) -> None:
    from api.main import create_app
    from core.duties import Duties, in_process
    from tests.helpers.db import bearer

    s = settings.model_copy(update={"webhook_max_attempts": 3})
    with (
        TestClient(create_app(s), headers=bearer(api_key)) as c,
        in_process(Duties.from_settings(s)),
    ):
        secret = c.get("/v1/webhook-secret").json()["secret"]
        with receiver(secret, fail_first=100) as (url, _):
            job_id = _learn(c, webhook_url=url, webhook_events="completed")["job"]["id"]
            c.post(f"/v1/jobs/{job_id}/cancel")
            (row,) = _deliveries(c, job_id, 1)
    assert row["status"] == "failed" and len(row["attempts"]) == 3
    assert row["attempts"][-1]["error"] == "HTTP 500"


@pytest.mark.parametrize(
    ("url", "events", "field"),
    [
        ("http://10.1.2.3/x", None, "webhook_url"),
        ("http://169.254.169.254/", None, "webhook_url"),
        ("http://localhost:9/x", None, "webhook_url"),
        ("ftp://example.com/", None, "webhook_url"),
        ("http://127.0.0.1:9/x", "started,finished", "webhook_events"),
    ],
)
def test_unsafe_targets_and_unknown_events_are_422(
    client: TestClient, settings: Settings, url: str, events: str | None, field: str
) -> None:
    s = (
        settings.model_copy(update={"webhook_allowed_networks": []})
        if field == "webhook_url"
        else settings
    )
    client.app.state.mifo.settings = s  # type: ignore[attr-defined]
    image, masks = make_scene()
    files = [("image", ("scene.png", encode(image), "image/png"))]
    files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
    form = {"webhook_url": url, **({"webhook_events": events} if events else {})}
    r = client.post("/v1/concepts", files=files, data=form)
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert client.get("/v1/concepts").json()["total"] == 0


def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def two(host: str, *a: Any, **k: Any) -> list:
        return [(2, 1, 6, "", ("93.184.216.34", 80)), (2, 1, 6, "", ("192.168.1.5", 80))]

    monkeypatch.setattr(socket, "getaddrinfo", two)
    with pytest.raises(UnsafeTarget, match="192.168.1.5"):
        check_url("http://example.com/hook", [])
    check_url("http://example.com/hook", ["192.168.0.0/16"])


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::7f00:1", "2002:7f00:1::1", "::ffff:127.0.0.1", "::127.0.0.1", "::ffff:10.0.0.1"],
)
def test_ipv6_forms_of_private_ipv4_are_refused(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    import socket

    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: [(10, 1, 6, "", (address, 80, 0, 0))]
    )
    with pytest.raises(UnsafeTarget, match="private, loopback or link-local"):
        check_url("http://rebind.example/hook", [])


def test_a_delivery_connects_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """A name that answers a public address, then loopback: the send must not look it up again."""
    import socket
    from types import SimpleNamespace

    from core.auth import new_webhook_secret
    from core.webhooks import _send

    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: [(2, 1, 6, "", (next(answers), 443))]
    )
    sent: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    class Http:
        def post(
            self, url: str, *, content: bytes, headers: dict[str, str], extensions: dict[str, Any]
        ) -> Any:
            sent.append((url, headers, extensions))
            return SimpleNamespace(status_code=204)

    delivery = SimpleNamespace(
        id=uuid.uuid4(),
        payload={"type": "job.completed"},
        url="https://rebind.example:8443/hook?x=1",
    )
    code, error, _, _ = _send(
        Http(),
        settings.model_copy(update={"webhook_allowed_networks": []}),
        delivery,
        new_webhook_secret(),
    )
    assert (code, error) == (204, None)
    url, headers, extensions = sent[0]
    assert url == "https://93.184.216.34:8443/hook?x=1"
    assert headers["host"] == "rebind.example:8443"
    assert extensions == {"sni_hostname": "rebind.example"}


def _certificates(tmp: Path, host: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for `host` signed by it: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def build(subject: str, issuer: x509.Name, key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mifo test CA")])
    ca = (
        build("mifo test CA", ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        build(host, ca_name, key)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@contextlib.contextmanager
def tls_receiver(cert: Path, key: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """An HTTPS server on 127.0.0.1 that records the TLS server name and Host it was sent."""
    import ssl

    seen: dict[str, Any] = {}
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: seen.__setitem__("sni", name)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            seen["host"] = self.headers["host"]
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("certified", ["hooks.example", "someone-else.example"])
def test_https_deliveries_verify_the_certificate_of_the_url_host_at_the_pinned_address(
    certified: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """Real TLS: the connection goes to the checked address, yet the server name sent and the
    certificate checked are the URL's host, so a certificate for another name is refused.
    The receiver's private CA is trusted the documented way, through SSL_CERT_FILE."""
    import socket
    from types import SimpleNamespace

    from core.auth import new_webhook_secret
    from core.webhooks import _send, http_client

    ca, cert, key = _certificates(tmp_path, certified)
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def resolve(host: str, port: int, *a: Any, **k: Any) -> list:
        if host != "127.0.0.1":  # connecting to an address literal still passes through here
            lookups.append(host)
        return real_getaddrinfo("127.0.0.1", port, *a, **k)  # every name is the receiver

    with tls_receiver(cert, key) as (port, seen):
        url = f"https://hooks.example:{port}/hook"
        delivery = SimpleNamespace(id=uuid.uuid4(), payload={"type": "job.completed"}, url=url)
        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        with http_client(settings) as http:
            code, error, _, retry = _send(http, settings, delivery, new_webhook_secret())
    assert lookups == ["hooks.example"]  # one check; the connection went to its answer
    if certified == "hooks.example":
        assert (code, error) == (204, None)
        assert seen == {"sni": "hooks.example", "host": f"hooks.example:{port}"}
    else:
        assert code is None and retry and "certificate" in (error or "").lower(), error
        assert seen.get("sni") == "hooks.example" and "host" not in seen


def test_a_dns_failure_at_delivery_is_retried_with_backoff(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, session: Session
) -> None:
    """A resolver that fails for a while (EAI_AGAIN) delays the delivery; it does not end it."""
    import socket
    from types import SimpleNamespace

    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from core import jobs, webhooks
    from core.db import make_engine, make_sessionmaker
    from core.models import WebhookDelivery
    from tests.helpers.factories import make_concept

    concept = make_concept(session)
    job = jobs.create_job(
        session,
        tenant_id=concept.tenant_id,
        kind="learn",
        concept_id=concept.id,
        params={},
        webhook_url="https://hooks.example/x",
        webhook_events=["completed"],
    )
    assert webhooks.emit(session, job.id, "completed")
    session.commit()

    failures = iter([True, True])  # down twice, then answers

    def resolve(host: str, port: int, *a: Any, **k: Any) -> list:
        if next(failures, False):
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(2, 1, 6, "", ("93.184.216.34", port))]

    posted: list[str] = []

    class Http:
        def post(self, url: str, **_: Any) -> Any:
            posted.append(url)
            return SimpleNamespace(status_code=204)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    s = settings.model_copy(update={"webhook_allowed_networks": [], "webhook_max_attempts": 3})
    engine = make_engine(s.db_url)
    sessions = make_sessionmaker(engine)

    def delivered() -> bool:  # the sender's loop, run here
        webhooks.dispatch_due(sessions, s, Http())
        return bool(posted)

    try:
        wait_until(delivered, 10, "never delivered", interval=0.02)
        with sessions() as check:
            (row,) = check.scalars(
                select(WebhookDelivery).options(selectinload(WebhookDelivery.tries))
            ).all()
            tries = sorted(row.tries, key=lambda a: a.number)
            assert row.status == "delivered" and row.attempts == 3
            assert [a.status_code for a in tries] == [None, None, 204]
            assert all("Temporary failure in name resolution" in (a.error or "") for a in tries[:2])
            assert tries[2].error is None
            at = [a.created_at for a in tries]
            gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(at)]
            assert gaps[0] >= s.webhook_backoff_seconds * 0.9
            assert gaps[1] >= 2 * s.webhook_backoff_seconds * 0.9  # the normal doubling delays
    finally:
        engine.dispose()
    assert posted == ["https://93.184.216.34/x"]
