"""Regenerate the console screenshots in docs/screenshots/ (shown in the README).

Runs the browser journey of tests/browser/test_console.py (chromium, a real `mifo serve
--base-model tiny`) with its screenshots written to a scratch folder, then keeps the two the
README shows, as 1280x800 PNGs reduced to a 256-colour palette to stay small.
Run: .venv/bin/python scripts/make_screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
TEST = "tests/browser/test_console.py::test_paint_learn_compose_synthesise_download"
SHOTS = ("console-new-concept.png", "console-compose.png")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mifo-shots-") as scratch:
        env = os.environ | {"MIFO_SCREENSHOTS": scratch, "CI": "true"}  # no silent skip
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", TEST], cwd=ROOT, env=env)
        if run.returncode != 0:
            return run.returncode
        OUT.mkdir(parents=True, exist_ok=True)
        for name in SHOTS:
            shot = Image.open(Path(scratch) / name).convert("RGB")
            small = shot.quantize(256, method=Image.Quantize.MEDIANCUT)
            small.save(OUT / name, optimize=True)
            print(f"{OUT / name}: {shot.width}x{shot.height}, {(OUT / name).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
