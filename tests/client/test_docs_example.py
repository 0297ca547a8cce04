"""The first python block of docs/client.md runs as written against a tiny `mifo serve`,
given the base URL through MIFO_API_URL, in a folder holding the tour's scene and masks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "client.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.S | re.M)


def _python_blocks() -> list[str]:
    return [body for lang, body in FENCE.findall(PAGE.read_text()) if lang == "python"]


def test_every_python_block_of_the_page_compiles() -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        compile(block, f"docs/client.md python block {i}", "exec")


def test_the_complete_example_runs_against_the_service(
    service: str, scene: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    image, masks = scene
    shutil.copy(image, tmp_path / "scene.png")
    for mask in masks:
        shutil.copy(mask, tmp_path / mask.name)  # mask0.png, mask1.png
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIFO_")}
    env |= {"MIFO_API_URL": service, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _python_blocks()[0]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    images = sorted((tmp_path / "images").glob("*_image_*.png"))
    assert len(images) == 2 and all(p.read_bytes().startswith(b"\x89PNG") for p in images)
    assert "succeeded" in done.stdout and "left blob" in done.stdout
    assert str(Path("images") / images[0].name) in done.stdout
