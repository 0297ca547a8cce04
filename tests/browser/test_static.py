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
from tests.helpers.serve import ROOT

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


# A request's first argument: a string or template (`...`, "...") or an expression up to its
# first comma or closing parenthesis at the same depth.
CALL = re.compile(r"\b(api|url|fetch|EventSource|streamWithKey)\(")
DOORS = re.compile(r"\bfunction (?:api|url|streamWithKey)\((\w+)")


def first_argument(text: str, start: int) -> str:
    depth, quote, k = 0, "", start
    while k < len(text):
        c = text[k]
        if quote:
            quote = "" if c == quote and text[k - 1] != "\\" else quote
        elif c in "`\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}" and depth:
            depth -= 1
        elif c in ",)" and not depth:
            return text[start:k].strip()
        k += 1
    raise AssertionError(f"unterminated call at {start}")


def test_the_console_calls_only_the_public_api() -> None:
    """Every request the console makes (api(), url(), fetch(), EventSource) is a v1/ path:
    a literal, or a name that holds one (a `const` set to a literal, or the path parameter
    of api.js's own doors, whose callers are checked here too). The signed artifact links
    in the API's bodies are only shown (src, href), never requested through these."""
    texts = {p.name: p.read_text() for p in STATIC.rglob("*.js")}
    blocks = {n: re.sub(r"/\*.*?\*/", "", t, flags=re.S) for n, t in texts.items()}
    code = {n: re.sub(r"^\s*//.*$", "", t, flags=re.M) for n, t in blocks.items()}
    names = {m for t in code.values() for m in DOORS.findall(t)}
    names |= {m for t in code.values() for m in re.findall(r"const (\w+) = [`\"]v1/", t)}
    literal = re.compile(r"""[`"]v1/[a-z]""")
    named = re.compile(rf"^(?:{'|'.join(sorted(names))})$|^`\$\{{(?:{'|'.join(sorted(names))})\}}/")
    seen = []
    for name, text in code.items():
        for call in CALL.finditer(text):
            if re.search(r"function\s+$", text[: call.start()][-12:]):
                continue  # the door's own definition
            arg = first_argument(text, call.end())
            seen.append(arg)
            ok = literal.match(arg) or named.match(arg) or arg.startswith("url(")
            assert ok, f"{name}: {call.group(1)}({arg}, ...) is not a v1/ path"
    assert len(seen) >= 15, seen  # the pattern still finds the calls
    calls = set()
    for text in code.values():
        calls |= set(re.findall(r"""[`"'](v1/[a-z-]+)""", text))
    assert calls == {"v1/concepts", "v1/jobs", "v1/segmentations"}, calls


def test_the_console_colours_are_the_layout_previews() -> None:
    from mifo_engine.render import PALETTE

    js = (STATIC / "js" / "paint.js").read_text()
    listed = re.search(r"export const COLOURS = \[([^\]]*)\]", js)
    assert listed, "paint.js has no COLOURS list"
    colours = re.findall(r'"#([0-9a-f]{6})"', listed.group(1))
    assert [tuple(int(c[i : i + 2], 16) for i in (0, 2, 4)) for c in colours] == list(PALETTE)


def test_the_package_data_ships_every_file() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = data["package-data"]["api"]
    shipped = {p for g in globs for p in (ROOT / "api").glob(g) if p.is_file()}
    assert shipped == set(FILES)


def test_the_learning_fields_show_the_engines_defaults() -> None:
    """An empty learning field leaves its option out: its placeholder is the engine's default."""
    from mifo_engine.config import LearnConfig

    html = (STATIC / "index.html").read_text()
    shown = {
        name: value for value, name in re.findall(r'placeholder="(\d+)" data-option="(\w+)"', html)
    }
    assert set(shown) == {"phase1_steps", "phase2_steps", "seed"}, shown
    defaults = LearnConfig()
    assert shown == {name: str(getattr(defaults, name)) for name in shown}


def test_the_screenshots_are_made_shown_and_of_the_window_size() -> None:
    """What scripts/make_screenshots.py writes is in docs/screenshots/, 1280x800, and shown by
    the README and docs/console.md."""
    from PIL import Image

    script = (ROOT / "scripts" / "make_screenshots.py").read_text()
    listed = re.search(r"^SHOTS = \(([^)]*)\)", script, re.M)
    assert listed, "make_screenshots.py has no SHOTS"
    shots = re.findall(r'"([\w.-]+\.png)"', listed.group(1))
    assert shots == ["console-new-concept.png", "console-compose.png"], shots
    readme = (ROOT / "README.md").read_text()
    console = (ROOT / "docs" / "console.md").read_text()
    for name in shots:
        with Image.open(ROOT / "docs" / "screenshots" / name) as shot:
            assert shot.size == (1280, 800), (name, shot.size)
        assert f"](docs/screenshots/{name})" in readme, name
        assert f"](screenshots/{name})" in console, name
