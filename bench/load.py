"""Load the HTTP API of a running service and report latencies and job throughput.

    python bench/load.py --url http://127.0.0.1:8000 --clients 8 --requests 50
    python bench/load.py --url ... --jobs 4 --steps 2      # also learn + synthesise end to end

Read-path latencies (GET /v1/jobs, /v1/concepts, /healthz) come from --clients threads
issuing --requests each; with --jobs, that many concepts are learned and synthesised (use a
`tiny` service unless you mean to load GPUs), and queue-to-finish times are reported.
Results print as JSON; --out also writes them to a file (bench/results/ is ignored by git).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

PATHS = ("/healthz", "/v1/jobs?limit=20", "/v1/concepts?limit=20")


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def scene(size: int = 96) -> tuple[bytes, list[bytes]]:
    image = Image.new("RGB", (size, size), (180, 190, 170))
    draw = ImageDraw.Draw(image)
    boxes = [(8, 24, 44, 72), (52, 24, 88, 72)]
    masks = []
    for box, colour in zip(boxes, ((210, 40, 40), (40, 40, 210)), strict=True):
        draw.ellipse(box, fill=colour)
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).ellipse(box, fill=255)
        masks.append(_png(mask))
    return _png(image), masks


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "n": len(ordered),
        "mean_ms": round(1000 * statistics.fmean(ordered), 2),
        "p50_ms": round(1000 * pick(0.5), 2),
        "p95_ms": round(1000 * pick(0.95), 2),
        "max_ms": round(1000 * ordered[-1], 2),
    }


def read_load(url: str, clients: int, requests: int) -> dict[str, dict[str, float]]:
    def worker(_: int) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {p: [] for p in PATHS}
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(requests):
                path = PATHS[i % len(PATHS)]
                t0 = time.perf_counter()
                http.get(path).raise_for_status()
                times[path].append(time.perf_counter() - t0)
        return times

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(worker, range(clients)))
    return {p: summary([t for r in results for t in r[p]]) for p in PATHS}


def job_load(url: str, jobs: int, steps: int) -> dict[str, object]:
    image, masks = scene()
    files = [("image", ("scene.png", image, "image/png"))]
    files += [("masks", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    options = {"phase1_steps": steps, "phase2_steps": 1, "diagnostic_timesteps": [100]}
    boxes = {"<asset0>": [0.05, 0.2, 0.48, 0.8], "<asset1>": [0.52, 0.2, 0.95, 0.8]}
    with httpx.Client(base_url=url, timeout=60) as http:
        t0 = time.perf_counter()
        posted = []
        for _ in range(jobs):
            r = http.post("/v1/concepts", files=files, data={"options": json.dumps(options)})
            r.raise_for_status()
            posted.append(r.json())
        learned = [_wait(http, p["job"]["id"]) for p in posted]
        body = {"prompt": "<asset0> and <asset1>", "boxes": boxes, "steps": steps}
        synth = [
            http.post(f"/v1/concepts/{p['concept']['id']}/syntheses", json=body).json()
            for p in posted
        ]
        made = [_wait(http, s["id"]) for s in synth]
        wall = time.perf_counter() - t0
    finished = learned + made
    return {
        "jobs": len(finished),
        "succeeded": sum(j["status"] == "succeeded" for j in finished),
        "wall_s": round(wall, 2),
        "jobs_per_minute": round(60 * len(finished) / wall, 2),
    }


def _wait(http: httpx.Client, job_id: str, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(job_id)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="per client")
    p.add_argument("--jobs", type=int, default=0, help="concepts to learn and synthesise")
    p.add_argument("--steps", type=int, default=2, help="steps per phase for --jobs")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    result: dict[str, object] = {
        "url": args.url,
        "reads": read_load(args.url, args.clients, args.requests),
    }
    if args.jobs:
        result["jobs"] = job_load(args.url, args.jobs, args.steps)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
