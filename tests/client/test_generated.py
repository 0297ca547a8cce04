"""`Client` is generated from `AsyncClient` (scripts/unasync_client.py): the committed
client.py must be what the generator writes now, so the two clients cannot drift apart."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "unasync_client.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync_client", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_sync_client_is_the_one_generated_from_the_async_one() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_a_hand_edit_of_the_sync_client_is_caught(tmp_path: Path) -> None:
    unasync_client = generator()
    generated = unasync_client.generate(tmp_path / "out")
    text = generated.read_text()
    assert text.startswith("# Generated from mifo_client/async_client.py by scripts/")
    assert "async " not in text and "await " not in text and "asyncio" not in text
    edited = tmp_path / "client.py"
    edited.write_text(text.replace("time.sleep(pause)", "time.sleep(2 * pause)"))
    diff = unasync_client.differences(generated, edited)
    assert "-            time.sleep(2 * pause)\n" in diff
    assert "+            time.sleep(pause)\n" in diff
