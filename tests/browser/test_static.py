"""The console's files, without a browser: served by the app, every asset shipped in the
package and referenced by a relative path (nothing from a CDN), and only /v1 routes used."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.console import STATIC
from tests.client.conftest import ROOT

FILES = sorted(p for p in STATIC.rglob("*") if p.is_file())
# src=, href= and ES-module imports: the references a page loads by itself.
REFERENCE = re.compile(r"""(?:src|href)="([^"#][^"]*)"|from\s+"([^"]+)"|import\s+"([^"]+)\"""")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from api.main import create_app
    from core.db import upgrade
    from core.settings import Settings

    data = tmp_path_factory.mktemp("static")
    settings = Settings(data_dir=data, broker_url="memory://", base_model="tiny", embedded=True)
    upgrade(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client


def test_root_and_console_redirect_to_the_console_page(client: TestClient) -> None:
    for path in ("/", "/console"):
        moved = client.get(path, follow_redirects=False)
        assert moved.status_code == 307 and moved.headers["location"] == "console/", path
    page = client.get("/")
    assert page.status_code == 200 and str(page.url).endswith("/console/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="js/app.js">' in page.text
    assert "/console" not in str(client.get("/openapi.json").json()["paths"])


def test_every_file_is_served_with_its_type(client: TestClient) -> None:
    types = {".html": "text/html", ".css": "text/css", ".js": "javascript"}
    for path in FILES:
        got = client.get(f"/console/{path.relative_to(STATIC).as_posix()}")
        assert got.status_code == 200, path
        assert types[path.suffix] in got.headers["content-type"], path
        assert got.content == path.read_bytes()
        policy = got.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(STATIC).as_posix())
def test_references_are_relative_and_shipped(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"https?://", text), f"{path.name} names an outside URL"
    for groups in REFERENCE.findall(text):
        ref = next(g for g in groups if g)
        if ref.startswith("data:"):
            continue  # inline (the empty icon): nothing to ship
        assert not ref.startswith("/"), f"{path.name}: {ref} is absolute"
        assert (path.parent / ref).resolve().is_file(), f"{path.name}: {ref} is not shipped"


def test_the_console_calls_only_the_public_api() -> None:
    calls = set()
    for path in STATIC.rglob("*.js"):
        calls |= set(re.findall(r"""[`"'](v1/[a-z-]+)""", path.read_text()))
    assert calls == {"v1/concepts", "v1/jobs"}, calls


def test_the_package_data_ships_every_file() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = data["package-data"]["api"]
    shipped = {p for g in globs for p in (ROOT / "api").glob(g) if p.is_file()}
    assert shipped == set(FILES)
