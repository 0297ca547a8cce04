"""The console in a real browser: Debian's chromium driven by Playwright, against a real
`mifo serve --base-model tiny` (tests/helpers/serve.py).

Without chromium (or Playwright) the tests skip, saying why; under CI (CI=true) they fail.
Screenshots go to $MIFO_SCREENSHOTS, default out/screenshots/ (git-ignored)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests.helpers.serve import ROOT, serve

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# The scene: two boxes of one colour family on grey; fractions of its side.
SIDE = 256
INSTANCES = {"red block": (0.1, 0.3, 0.42, 0.72), "orange block": (0.58, 0.3, 0.9, 0.72)}


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    pytest.skip(reason)


# Module scope: Playwright's sync API keeps an event loop running in this thread while it is
# open, and asyncio.run() in any later test would refuse to start beside it.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        _missing(f"no chromium at {CHROMIUM} (apt-get install -y chromium chromium-driver)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def shots() -> Path:
    folder = Path(os.environ.get("MIFO_SCREENSHOTS") or ROOT / "out" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser: Any, shots: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A 1280x800 page that fails the test on any script error or console error; its last
    state is kept as `last-<test>.png` beside the screenshots."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(90_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    page.errors = errors  # type: ignore[attr-defined]
    yield page
    page.screenshot(path=str(shots / f"last-{request.node.name}.png"), full_page=True)
    context.close()
    # A refused request logs "Failed to load resource" by itself: those are the tests' point.
    unexpected = [e for e in errors if "Failed to load resource" not in e]
    assert not unexpected, unexpected


@pytest.fixture(scope="module")
def open_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mifo serve` on loopback: no key needed."""
    with serve(tmp_path_factory.mktemp("console")) as base:
        yield base


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`mifo serve` that requires keys, and one key made by `mifo keys create`."""
    data = tmp_path_factory.mktemp("keyed")
    with serve(data, MIFO_REQUIRE_API_KEYS="true") as base:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIFO_")}
        made = subprocess.run(
            [sys.executable, "-m", "mifo_cli", "keys", "create", "--tenant", "console"],
            env=env | {"MIFO_DATA_DIR": str(data)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        yield base, made.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def scene_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The scene as a PNG, and each instance's mask as a PNG (for the upload path)."""
    folder = tmp_path_factory.mktemp("scene")
    scene = Image.new("RGB", (SIDE, SIDE), (128, 128, 128))
    draw = ImageDraw.Draw(scene)
    masks = []
    for (name, box), colour in zip(INSTANCES.items(), [(200, 40, 40), (230, 130, 30)], strict=True):
        corners = [round(v * SIDE) for v in box]
        draw.rectangle(corners, fill=colour)
        mask = Image.new("L", (SIDE, SIDE), 0)
        ImageDraw.Draw(mask).rectangle(corners, fill=255)
        masks.append(folder / f"{name.replace(' ', '-')}.png")
        mask.save(masks[-1])
    scene.save(folder / "scene.png")
    return folder / "scene.png", masks


def is_png(data: bytes) -> bool:
    return data.startswith(b"\x89PNG\r\n\x1a\n") and Image.open(io.BytesIO(data)).format == "PNG"
