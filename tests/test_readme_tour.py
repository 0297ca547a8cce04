"""The README's five-minute tour, run as written (bash, curl, jq) against a real `mifo serve`
with `tiny`: the scene is made, learned, synthesised twice and downloaded, and the second
download keeps the first one's files."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOUR = re.search(r"## A five-minute tour\n(.*?)\n## ", (ROOT / "README.md").read_text(), re.S)

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")), reason="the tour uses curl and jq"
)


def _blocks() -> tuple[str, str]:
    assert TOUR is not None, "README.md has no '## A five-minute tour' section"
    blocks = re.findall(r"```bash\n(.*?)```", TOUR.group(1), re.S)
    scene = next(b for b in blocks if "scene.save" in b)
    calls = next(b for b in blocks if "/v1/concepts" in b)
    return scene.replace(".venv/bin/python", sys.executable), calls


def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_readme_tour_runs_as_written(service: str, tmp_path: Path) -> None:
    scene, calls = _blocks()
    assert _bash(scene, tmp_path).returncode == 0
    calls = calls.replace("API=http://127.0.0.1:8000", f"API={service}")
    started = time.monotonic()
    first = _bash(calls, tmp_path)
    took = time.monotonic() - started
    assert first.returncode == 0, first.stderr[-2000:]
    saved = sorted(p.name for p in tmp_path.glob("synth_*.png"))
    assert len(saved) == 2 and first.stdout.count("saved synth_") == 2, first.stdout[-2000:]
    assert all((tmp_path / name).read_bytes().startswith(b"\x89PNG") for name in saved)
    # Synthesise and download again: new names, the first files kept.
    again = "API=" + service + "\nCONCEPT=$(jq -r .concept.id created.json)\n"
    again += calls[calls.index("# 3. Synthesise") :]
    second = _bash(again, tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(list(tmp_path.glob("synth_*.png"))) == 4
    assert took < 300, f"the tour's jobs took {took:.0f} s"


def test_the_tours_download_loop_says_when_it_fails(service: str, tmp_path: Path) -> None:
    _, calls = _blocks()
    download = calls[calls.index("# 4. Download") :]
    missing = "00000000-0000-0000-0000-000000000000"
    failed = _bash(f"API={service}\nSYNTH={missing}\n{download}", tmp_path)
    assert "synthesis did not succeed" in failed.stderr
    assert not list(tmp_path.glob("synth_*.png"))


def test_the_tour_says_why_a_synthesis_was_refused(service: str, tmp_path: Path) -> None:
    """A box below the smallest `tiny` takes: the tour prints the problem, not `null`s."""
    scene, calls = _blocks()
    assert _bash(scene, tmp_path).returncode == 0
    learn = calls[: calls.index("# 2. Follow it")].replace(
        "API=http://127.0.0.1:8000", f"API={service}"
    )
    assert _bash(learn, tmp_path).returncode == 0
    synth = calls[calls.index("# 3. Synthesise") : calls.index("curl -sN $API/v1/jobs/$SYNTH")]
    synth = synth.replace("[0.05, 0.3, 0.45, 0.8]", "[0.05, 0.3, 0.1, 0.35]")
    wait = (
        "until curl -s $API/v1/concepts/$CONCEPT | jq -e '.status == \"ready\"' >/dev/null; "
        "do sleep 1; done\n"
    )
    script = f"API={service}\nCONCEPT=$(jq -r .concept.id created.json)\n{wait}{synth}"
    refused = _bash(script, tmp_path)
    assert refused.returncode == 0, refused.stderr[-2000:]
    assert "refused: Box [0.05, 0.3, 0.1, 0.35] is smaller than one cell" in refused.stderr
    assert "boxes[<asset0>]" in refused.stderr and "at least 0.250 wide" in refused.stderr
