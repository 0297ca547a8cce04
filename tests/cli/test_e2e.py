"""End to end with real processes: `mifo api` + `mifo worker` on PostgreSQL, Redis and an
S3-compatible server (moto); then the same flow with `mifo serve` (embedded mode).

The model is `tiny` (random test weights): the images are noise, the plumbing is real."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis
from PIL import Image

from tests.helpers.db import throwaway_postgres
from tests.helpers.images import encode, make_scene
from tests.helpers.servers import free_port, s3_server
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

MIFO = [sys.executable, "-m", "mifo_cli"]
ROOT = Path(__file__).resolve().parents[2]
# Long enough that the learning job runs across several progress writes (0.2 s apart), so
# the stream sends progress events between its status events on any machine.
QUICK = {"phase1_steps": 30, "phase2_steps": 1, "reward_steps": 1, "diagnostic_timesteps": [100]}
HEADERS: dict[str, str] = {}  # the production test's API key; embedded mode needs none
BOXES = {"<asset0>": [0.05, 0.3, 0.45, 0.8], "<asset1>": [0.55, 0.3, 0.95, 0.8]}


@contextlib.contextmanager
def processes(env: dict[str, str], logs: Path, *commands: list[str]) -> Iterator[None]:
    procs = []
    try:
        for i, cmd in enumerate(commands):
            out = open(logs / f"proc{i}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append((subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=out), out))
        yield
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, out in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            out.close()
        for log in sorted(logs.glob("proc*.log")):  # shown by pytest when a test failed
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


def wait_ready(base: str, timeout: float = 120) -> None:
    def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        return False

    wait_until(ready, timeout, f"{base} never became ready", interval=0.1)


def follow(base: str, job_id: str, timeout: float = 300) -> list[tuple[str, dict[str, Any]]]:
    """Read the job's event stream to its end."""
    seen = []
    with httpx.stream(
        "GET", f"{base}/v1/jobs/{job_id}/events", timeout=timeout, headers=HEADERS
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                seen.append((kind, json.loads(line[6:])))
    return seen


def poll(base: str, job_id: str, timeout: float = 300) -> dict[str, Any]:
    job: dict[str, Any] = {}

    def ended() -> bool:
        job.update(httpx.get(f"{base}/v1/jobs/{job_id}", headers=HEADERS).json())
        return job["status"] in ("succeeded", "failed", "canceled")

    wait_until(ended, timeout, f"job {job_id} did not finish", interval=0.1)
    return job


def png(url: str) -> Image.Image:
    r = httpx.get(url, follow_redirects=True, timeout=30)
    assert r.status_code == 200, r.text
    picture = Image.open(io.BytesIO(r.content))
    picture.load()
    assert picture.format == "PNG"
    return picture


def whole_flow(base: str) -> dict[str, Any]:
    """Learn (following SSE), synthesise with two boxes (polling), download, check."""
    image, masks = make_scene()
    files = [("image", ("scene.png", encode(image), "image/png"))]
    files += [("masks", (f"mask{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
    data = {"names": "left blob,right blob", "options": json.dumps(QUICK)}
    r = httpx.post(f"{base}/v1/concepts", files=files, data=data, timeout=60, headers=HEADERS)
    assert r.status_code == 202, r.text
    concept_id, job_id = r.json()["concept"]["id"], r.json()["job"]["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"

    events = follow(base, job_id)
    statuses = [d["status"] for k, d in events if k == "status"]
    assert statuses[-1] == "succeeded", events[-1]
    assert "running" in statuses and any(k == "progress" for k, _ in events)
    concept = events[-1][1]["result"]["concept"]
    assert concept["status"] == "ready" and [t["name"] for t in concept["tokens"]] == [
        "left blob",
        "right blob",
    ]
    for token in concept["tokens"]:
        png(token["attention_map"])
    assert png(concept["inputs"]["masks"][1]).size == masks[1].size

    body = {
        "prompt": "a photo of <asset0> and <asset1> on grass",
        "boxes": BOXES,
        "num_images": 2,
        "seed": 5,
        "steps": 2,
        "options": {"max_guidance_iters": 1},
    }
    r = httpx.post(
        f"{base}/v1/concepts/{concept_id}/syntheses", json=body, timeout=30, headers=HEADERS
    )
    assert r.status_code == 202, r.text
    job = poll(base, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    images = job["result"]["images"]
    assert [i["seed"] for i in images] == [5, 6]
    for item in images:
        assert png(item["url"]).size == (64, 64)
        assert png(item["preview_url"]).width >= 64  # drawn boxes and names, maybe enlarged
    metrics = httpx.get(f"{base}/metrics").text
    assert 'mifo_jobs{kind="synthesize",status="succeeded"} 1.0' in metrics
    assert 'mifo_queue_depth{queue="learn"} 0.0' in metrics
    return {"concept_id": concept_id, "images": images}


def test_production_processes_postgres_redis_s3(tmp_path: Path) -> None:
    db_index = random.randint(1, 15)
    broker = f"redis://127.0.0.1:6379/{db_index}"
    with throwaway_postgres() as db, s3_server(bucket="mifo-e2e") as s3:
        env = {
            **os.environ,
            "MIFO_DATABASE_URL": db,
            "MIFO_BROKER_URL": broker,
            "MIFO_STORAGE_URL": "s3://mifo-e2e/service",
            "MIFO_S3_ENDPOINT_URL": s3,
            "MIFO_BASE_MODEL": "tiny",
            "MIFO_DEVICE": "cpu",
            "MIFO_PROGRESS_INTERVAL": "0.2",
            "MIFO_DATA_DIR": str(tmp_path / "unused"),
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        refused = subprocess.run([*MIFO, "api"], env=env, cwd=ROOT, capture_output=True, text=True)
        assert refused.returncode == 2 and "mifo migrate" in refused.stderr
        migrated = subprocess.run([*MIFO, "migrate"], env=env, cwd=ROOT, capture_output=True)
        assert migrated.returncode == 0, migrated.stderr
        made = subprocess.run(
            [*MIFO, "keys", "create", "--tenant", "e2e"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        HEADERS["Authorization"] = "Bearer " + made.stdout.strip().splitlines()[-1]
        try:
            with processes(env, tmp_path, [*MIFO, "api", "--port", str(port)], [*MIFO, "worker"]):
                wait_ready(base)
                result = whole_flow(base)
                assert result["images"][0]["url"].startswith(s3)  # presigned, straight from S3
                s3c = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
                prefix = f"service/concepts/{result['concept_id']}/"
                assert s3c.list_objects_v2(Bucket="mifo-e2e", Prefix=prefix)["KeyCount"] > 0
                gone = httpx.delete(f"{base}/v1/concepts/{result['concept_id']}", headers=HEADERS)
                assert gone.status_code == 204
                assert s3c.list_objects_v2(Bucket="mifo-e2e", Prefix=prefix)["KeyCount"] == 0
        finally:
            HEADERS.clear()
            redis.Redis.from_url(broker).flushdb()


def test_embedded_mifo_serve(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIFO_")}
    env["MIFO_PROGRESS_INTERVAL"] = "0.2"
    data = tmp_path / "data"
    serve = [*MIFO, "serve", "--port", str(port), "--data-dir", str(data), "--base-model", "tiny"]
    with processes(env, tmp_path, serve):
        wait_ready(base)
        result = whole_flow(base)
        assert result["images"][0]["url"].startswith(f"{base}/v1/artifacts/")
    assert (data / "mifo.db").is_file() and any((data / "objects").rglob("image_00.png"))
    # Stopping `mifo serve` stops its worker too.
    wait_until(
        lambda: not _with_env(f"MIFO_DATA_DIR={data.resolve()}"),
        30,
        "the embedded worker outlived mifo serve",
        interval=0.1,
    )


def _with_env(entry: str) -> list[int]:
    """Processes whose environment holds `entry`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if entry.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
    return found
