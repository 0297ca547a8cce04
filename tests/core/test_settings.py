"""Settings: defaults, validation, what reaches uvicorn; the API process never imports torch."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from core.settings import Settings
from mifo_engine.models import DEFAULT_BASE_MODEL

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_embedded_mode_under_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIFO_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.database_url == f"sqlite:///{tmp_path}/mifo.db"
    assert s.storage_url == (tmp_path / "objects").as_uri()
    assert s.broker_url == "filesystem://" and s.events_url is None
    assert s.base_model == DEFAULT_BASE_MODEL


def test_redis_broker_also_carries_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIFO_BROKER_URL", "redis://r:6379/0")
    assert Settings().events_url == "redis://r:6379/0"


def test_bad_storage_url_names_the_setting() -> None:
    with pytest.raises(ValidationError, match="storage_url"):
        Settings(storage_url="ftp://x")


def test_api_never_imports_torch(tmp_path: Path) -> None:
    code = f"""
import sys, uuid
from core.models import Concept
from tests.helpers.factories import concept_meta
from fastapi.testclient import TestClient
from api.main import create_app
from core.db import upgrade
from core.settings import Settings
from tests.helpers.images import encode, make_scene
s = Settings(data_dir={str(tmp_path)!r}, broker_url="memory://", base_model="tiny", embedded=True)
upgrade(s.db_url)
image, masks = make_scene()
with TestClient(create_app(s)) as c:
    files = [("image", ("s.png", encode(image)))] + [("masks", ("m.png", encode(m))) for m in masks]
    assert c.post("/v1/concepts", files=files).status_code == 202
    assert c.post("/v1/concepts", files=files[:2]).status_code == 202
    cid = c.get("/v1/concepts").json()["data"][0]["id"]
    assert c.post(f"/v1/concepts/{{cid}}/syntheses", json={{"prompt": "x", "boxes": {{}}}}).status_code == 409
    with c.app.state.mifo.sessions() as db:
        row = db.get(Concept, uuid.UUID(cid))
        row.status, row.meta = "ready", concept_meta(["a", "b"])
        db.commit()
    body = {{"prompt": "a photo of <asset0>", "boxes": {{"<asset0>": [0.1, 0.1, 0.6, 0.6]}}}}
    assert c.post(f"/v1/concepts/{{cid}}/syntheses", json=body).status_code == 202
assert "torch" not in sys.modules, "torch was imported"
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("command", ["api", "serve"])
def test_log_level_and_access_log_reach_uvicorn(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    import mifo_cli.embedded
    from core.db import upgrade
    from mifo_cli import main

    monkeypatch.setenv("MIFO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MIFO_LOG_LEVEL", "warning")
    monkeypatch.setenv("MIFO_ACCESS_LOG", "false")
    for name in ("MIFO_EMBEDDED", "MIFO_BIND_HOST"):  # the commands set these: undone after
        monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.delenv(name)
    upgrade(Settings().db_url)
    ran: dict[str, Any] = {}

    def run(server: uvicorn.Server, sockets: Any = None) -> None:  # what would be served
        c = server.config
        ran.update(app=c.app, port=c.port, log_level=c.log_level, access_log=c.access_log)

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw, app=app))
    # `serve` also starts a worker process and installs a SIGTERM handler: not here.
    # The stand-in runs until it is told to stop, as the real one does.
    ended = threading.Event()
    worker = SimpleNamespace(
        pid=0,
        terminate=ended.set,
        wait=lambda timeout=None: 0 if ended.wait(timeout) else None,
        poll=lambda: 0 if ended.is_set() else None,
    )
    monkeypatch.setattr(mifo_cli.embedded.subprocess, "Popen", lambda *a, **kw: worker)
    monkeypatch.setattr(mifo_cli.embedded.signal, "signal", lambda *a: None)
    configured: list[str] = []  # the level the command sets; this process keeps its logging
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: configured.append(kw["level"]))
    assert main([command, "--port", "8123"]) == 0
    assert configured and set(configured) == {"WARNING"}
    assert ran["app"] == "api.main:app_factory" and ran["port"] == 8123
    assert ran["log_level"] == "warning" and ran["access_log"] is False


def test_bad_log_level_names_the_setting() -> None:
    with pytest.raises(ValidationError, match="log_level"):
        Settings(log_level="loud")


def test_an_empty_metrics_token_leaves_metrics_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIFO_METRICS_TOKEN", "")
    assert Settings().metrics_token is None
    monkeypatch.setenv("MIFO_METRICS_TOKEN", "t")
    assert Settings().metrics_token is not None
