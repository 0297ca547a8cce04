"""A real `mifo serve --base-model tiny` on a free port, its data in a folder of the test's,
and the small learning and synthesis requests the tests send it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
# Learning and synthesis small enough for the tiny model on a busy 2-core machine.
QUICK = {"phase1_steps": 2, "phase2_steps": 1, "reward_steps": 1, "diagnostic_timesteps": [100]}
BOXES = {"<asset0>": [0.05, 0.3, 0.45, 0.8], "<asset1>": [0.55, 0.3, 0.95, 0.8]}
PROMPT = "a photo of <asset0> and <asset1>"


@contextlib.contextmanager
def serve(data: Path, **env: str) -> Iterator[str]:
    """Yield the base URL of a ready `mifo serve` keeping its state in `data`."""
    with serve_process(data, **env) as (base, _):
        yield base


@contextlib.contextmanager
def serve_process(
    data: Path, cwd: Path = ROOT, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`serve`, yielding the process too (for a test that stops it itself); run in `cwd`."""
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIFO_")}
    clean |= {"MIFO_DATA_DIR": str(data), "MIFO_PROGRESS_INTERVAL": "0.2"}
    # The evaluations' feature models and the segmentations' SAM: built in and random, like
    # the base model.
    clean |= {"MIFO_CLIP_MODEL": "tiny", "MIFO_DINO_MODEL": "tiny", "MIFO_SEGMENT_MODEL": "tiny"}
    clean |= env
    log = open(data / "serve.log", "wb")  # noqa: SIM115 - closed with the process
    # -P: as the `mifo` script runs, without the current folder first on the import path
    command = [sys.executable, "-P", "-m", "mifo_cli", "serve", "--base-model", "tiny"]
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        env=clean,
        cwd=cwd,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mifo serve never became ready: {_tail(data)}")
            time.sleep(0.3)
        yield base, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def _tail(data: Path) -> str:
    return (data / "serve.log").read_text(errors="replace")[-3000:]


# Fixtures: the conftests of tests/client and tests/cli import them.
@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("service")) as base:
        yield base


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A scene and its two masks as files."""
    from tests.helpers.images import encode, make_scene

    folder = tmp_path_factory.mktemp("scene")
    image, masks = make_scene()
    (folder / "scene.png").write_bytes(encode(image))
    paths = []
    for i, mask in enumerate(masks):
        paths.append(folder / f"mask{i}.png")
        paths[-1].write_bytes(encode(mask))
    return folder / "scene.png", paths
