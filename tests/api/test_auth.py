"""API keys, tenants and signed download links."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from core import auth
from core.settings import Settings
from tests.helpers.db import bearer, new_key
from tests.helpers.factories import make_artifact, make_concept, make_job, scene

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db_url(postgres_url: str) -> str:  # auth does not depend on the database kind
    return postgres_url


def _post_concept(client: TestClient, **headers: str):  # type: ignore[no-untyped-def]
    image, masks = scene()
    files = [("image", ("s.png", image, "image/png"))]
    files += [("masks", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    return client.post("/v1/concepts", files=files, headers=headers)


def test_requests_without_a_valid_key_are_401(
    settings: Settings, api_key: str, session: Session
) -> None:
    job = make_job(session, make_concept(session), kind="synthesize", status="running")
    session.commit()
    with TestClient(create_app(settings)) as c:
        # The status poll authenticates without FastAPI's dependencies: it must answer alike.
        for path in ("/v1/jobs", f"/v1/jobs/{job.id}"):
            for headers in (
                {},
                {"Authorization": "Basic abc"},
                {"Authorization": "Bearer"},
                {"Authorization": "Bearer "},
                bearer("mifo_kdeadbeef.nope"),
                bearer("not-a-key"),
                bearer(api_key + "x"),
            ):
                r = c.get(path, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.headers["www-authenticate"] == "Bearer"
                problem = r.json()
                assert problem["field"] == "Authorization" and "mifo keys create" in problem["fix"]
            assert c.get(path, headers=bearer(api_key)).status_code == 200
            assert c.get(path, headers={"Authorization": f"bearer {api_key}"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes need no key


def test_openapi_documents_the_bearer_key_on_every_route_that_needs_it(
    settings: Settings, api_key: str
) -> None:
    public = {"/healthz", "/readyz", "/metrics", "/v1/artifacts/{artifact_id}"}
    with TestClient(create_app(settings)) as c:
        schema = c.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        for path, operations in schema["paths"].items():
            for method, op in operations.items():
                if path in public:
                    assert "security" not in op, (method, path)
                    continue
                assert op.get("security") == [{"HTTPBearer": []}], (method, path)
                assert "401" in op["responses"] and "429" in op["responses"], (method, path)
                # ... and it is enforced: no key, no answer but 401.
                url = path.replace("{concept_id}", "00000000-0000-4000-8000-000000000000")
                url = url.replace("{job_id}", "00000000-0000-4000-8000-000000000000")
                r = c.request(method.upper(), url)
                assert r.status_code == 401, (method, path, r.status_code)


def test_another_tenants_resources_are_404_like_missing_ones(
    client: TestClient, settings: Settings, session: Session
) -> None:
    concept = make_concept(session, tenant="other")
    job = make_job(session, concept, kind="synthesize", status="running")
    session.commit()
    theirs = bearer(new_key(settings, "other"))
    assert client.get(f"/v1/jobs/{job.id}", headers=theirs).status_code == 200
    missing = "00000000-0000-4000-8000-000000000000"
    for method, path in (
        ("GET", f"/v1/concepts/{concept.id}"),
        ("DELETE", f"/v1/concepts/{concept.id}"),
        ("GET", f"/v1/jobs/{job.id}"),
        ("POST", f"/v1/jobs/{job.id}/cancel"),
        ("GET", f"/v1/jobs/{job.id}/events"),
        ("GET", f"/v1/jobs/{job.id}/webhooks"),
    ):
        mine = client.request(method, path)
        gone = client.request(
            method, path.replace(str(concept.id), missing).replace(str(job.id), missing)
        )
        assert mine.status_code == gone.status_code == 404, (method, path)
        assert mine.json()["type"] == gone.json()["type"]
    body = {"prompt": "<asset0>", "boxes": {"<asset0>": [0.1, 0.1, 0.5, 0.5]}}
    assert client.post(f"/v1/concepts/{concept.id}/syntheses", json=body).status_code == 404
    assert client.get("/v1/jobs").json()["total"] == 0
    assert client.get("/v1/concepts").json()["total"] == 0
    session.refresh(job)
    assert job.status == "running" and not job.cancel_requested  # nothing was touched


def test_download_links_are_signed_and_expire(
    client: TestClient, session: Session, settings: Settings
) -> None:
    r = _post_concept(client)
    url = r.json()["concept"]["inputs"]["image"]
    assert client.get(url).status_code == 200
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert int(query["expires"]) >= time.time() + settings.presign_seconds
    plain = TestClient(client.app)  # no API key: the link alone is enough
    assert plain.get(url).status_code == 200
    assert plain.get(parts.path).status_code == 422  # the id alone is not
    forged = f"{parts.path}?expires={int(query['expires']) + 10}&signature={query['signature']}"
    assert plain.get(forged).status_code == 404
    state = client.app.state.mifo  # type: ignore[attr-defined]
    from core.auth import sign_link

    aid = parts.path.rsplit("/", 1)[1]
    import uuid

    past = int(time.time()) - 5
    expired = (
        f"{parts.path}?expires={past}&signature={sign_link(state.link_key, uuid.UUID(aid), past)}"
    )
    r = plain.get(expired)
    assert r.status_code == 410 and r.json()["field"] == "expires"


def test_artifacts_of_other_tenants_need_their_link(client: TestClient, session: Session) -> None:
    concept = make_concept(session, tenant="other")
    art = make_artifact(session, concept, None, "input", 0)
    session.commit()
    assert client.get(f"/v1/artifacts/{art.id}?expires=9999999999&signature=x").status_code == 404


def test_webhook_secret_route(client: TestClient, settings: Settings) -> None:
    mine = client.get("/v1/webhook-secret").json()["secret"]
    theirs = client.get("/v1/webhook-secret", headers=bearer(new_key(settings, "other")))
    assert mine.startswith("whsec_") and theirs.json()["secret"] != mine


@pytest.mark.parametrize(
    ("embedded", "host", "require", "anonymous"),
    [
        (True, "127.0.0.1", False, True),
        (True, "0.0.0.0", False, False),
        (True, "::1", True, False),
        (False, "127.0.0.1", False, False),
    ],
)
def test_keys_are_optional_only_embedded_on_loopback(
    settings: Settings,
    embedded: bool,
    host: str,
    require: bool,
    anonymous: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = settings.model_copy(
        update={"embedded": embedded, "bind_host": host, "require_api_keys": require}
    )
    with caplog.at_level("INFO", "mifo"), TestClient(create_app(s)) as c:
        assert (c.get("/v1/jobs").status_code == 200) is anonymous
    said = "API keys are NOT required" if anonymous else "API keys required"
    assert said in caplog.text


def test_mifo_keys_create_list_revoke(settings: Settings) -> None:
    env = {
        **os.environ,
        "MIFO_DATABASE_URL": settings.db_url,
        "MIFO_DATA_DIR": str(settings.data_dir),
    }

    def mifo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mifo_cli", "keys", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = mifo("create", "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("mifo_k") and "whsec_" in made.stdout
    again = mifo("create", "--tenant", "acme")
    assert "whsec_" not in again.stdout  # the secret shows only when the tenant is created
    key_id = key.removeprefix("mifo_").split(".")[0]
    listed = mifo("list").stdout
    assert key_id in listed and "acme" in listed and key not in listed
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/jobs", headers=bearer(key)).status_code == 200
        assert mifo("revoke", key_id).returncode == 0
        state = c.app.state.mifo  # type: ignore[attr-defined]
        state.verifier.refresh(state.sessions)  # what the API does every second, now
        assert c.get("/v1/jobs", headers=bearer(key)).status_code == 401
    assert "revoked" in mifo("list").stdout
    assert mifo("revoke", "knothere").returncode == 2


def test_keys_are_stored_hashed(settings: Settings, api_key: str, session: Session) -> None:
    from core.models import ApiKey

    rows = session.query(ApiKey).all()
    assert rows and all(api_key not in (r.secret_hash, r.id) for r in rows)
    assert all(len(r.secret_hash) == 64 for r in rows)


def test_key_refresh_reloads_used_keys_and_sees_revocation(settings: Settings) -> None:
    from core.db import make_engine, make_sessionmaker, session_scope

    sessions = make_sessionmaker(make_engine(settings.db_url))
    with session_scope(sessions) as s:
        row, clear = auth.create_key(s, tenant=auth.get_or_create_tenant(s, "refresh")[0])
        key_id = row.id
    verifier = auth.KeyVerifier()
    assert verifier.cached(key_id) is None
    verifier.load(sessions, key_id)
    with session_scope(sessions) as s:
        auth.revoke_key(s, key_id)
    verifier.refresh(sessions)
    entry = verifier.cached(key_id)
    assert entry is not None and auth.KeyVerifier.check(clear, key_id, entry) is None
    sessions.kw["bind"].dispose()
