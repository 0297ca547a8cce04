"""Load the HTTP API of a running service and report latencies and job throughput.

    python bench/load.py --url http://127.0.0.1:8000 --clients 8 --requests 50
    python bench/load.py --url ... --jobs 4 --steps 2      # also learn + synthesise end to end

Read-path latencies (GET /v1/jobs, /v1/concepts, /healthz) come from --clients threads
issuing --requests each; with --jobs, that many concepts are learned and synthesised (use a
`tiny` service unless you mean to load GPUs), and queue-to-finish times are reported.
Results print as JSON; --out also writes them to a file (bench/results/ is ignored by git).

    python bench/load.py --compare --pollers 50 --seconds 10

--compare needs no running service: it starts `mifo api` (one uvicorn process) on a
throwaway PostgreSQL database with Redis rate limiting, and a bare FastAPI JSON endpoint in
the same uvicorn set-up; concurrent keep-alive clients on loopback submit synthesis jobs,
then poll their status, and the same number of clients hit the bare endpoint. Throughput
and p50/p99 latency print side by side.
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


# --compare: the service against a bare endpoint -------------------------------------------

try:
    from fastapi import FastAPI

    bare_app = FastAPI()

    @bare_app.get("/v1/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}
except ImportError:  # pragma: no cover - FastAPI is a dependency of the service
    pass


async def _closed_loop(
    port: int, requests: list[bytes], clients: int, seconds: float, warmup: float = 0.0
) -> dict:
    """`clients` keep-alive connections, each sending its next request as soon as the last
    answer is in, for `warmup` + `seconds`; only the last `seconds` are measured (the first
    requests fill the server's caches and connection pool). A minimal HTTP/1.1 client: the
    load generator shares the machine's cores with the server, so it must cost little."""
    import asyncio

    samples: list[float] = []
    errors = {"n": 0}
    start = time.perf_counter() + warmup
    stop = start + seconds

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        k = i
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(requests[k % len(requests)])
            k += clients
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if t0 < start:
                continue
            samples.append(time.perf_counter() - t0)
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 202")):
                errors["n"] += 1
        writer.close()

    await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.perf_counter() - start
    ordered = sorted(samples)
    pick = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)  # noqa: E731
    return {
        "requests": len(ordered),
        "errors": errors["n"],
        "rps": round(len(ordered) / wall, 1),
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
    }


def _get(path: str, key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()


def _post_json(path: str, key: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def compare(
    pollers: int, seconds: float, submitters: int, warmup: float = 1.0, access_log: bool = False
) -> dict[str, object]:
    import asyncio
    import os
    import random
    import socket
    import subprocess

    from core import auth
    from core.db import make_engine, make_sessionmaker, session_scope, upgrade
    from core.models import Concept
    from tests.helpers.db import throwaway_postgres
    from tests.helpers.factories import concept_meta

    def port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def ready(p: int, path: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{p}{path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"port {p} never answered {path}")

    root = Path(__file__).resolve().parents[1]
    broker = f"redis://127.0.0.1:6379/{random.randint(1, 13)}"
    with throwaway_postgres() as db:
        upgrade(db)
        sessions = make_sessionmaker(make_engine(db))
        with session_scope(sessions) as s:
            tenant = auth.get_or_create_tenant(s, "bench")[0]
            keys = [auth.create_key(s, tenant=tenant)[1] for _ in range(pollers)]
            concept = Concept(
                tenant_id=tenant.id,
                status="ready",
                base_model="tiny",
                names=["a", "b"],
                options={},
                meta=concept_meta(["a", "b"]),
                width=64,
                height=64,
            )
            s.add(concept)
            s.flush()
            concept_id = concept.id
        env = {
            **os.environ,
            "MIFO_DATABASE_URL": db,
            "MIFO_BROKER_URL": broker,
            "MIFO_BASE_MODEL": "tiny",
            "MIFO_DATA_DIR": "/tmp/mifo-bench",
            "MIFO_MAX_ACTIVE_JOBS": "1000000",
            "MIFO_RATE_LIMIT_PER_SECOND": "100000",
            "MIFO_RATE_LIMIT_BURST": "100000",
            "MIFO_ACCESS_LOG": str(access_log).lower(),
            "MIFO_LOG_LEVEL": "info" if access_log else "warning",
        }
        # Both servers log alike: an access line per request with --access-log, else nothing.
        bare_logging = (
            ["--log-level", "info"] if access_log else ["--log-level", "warning", "--no-access-log"]
        )
        service_port, bare_port = port(), port()
        log = open("/tmp/mifo-bench-api.log", "wb")  # noqa: SIM115 - closed below
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "mifo_cli", "api", "--port", str(service_port)],
                env=env,
                cwd=root,
                stdout=log,
                stderr=log,
            ),
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bench.load:bare_app",
                    "--port",
                    str(bare_port),
                    *bare_logging,
                ],
                cwd=root,
                stdout=log,
                stderr=log,
            ),
        ]
        try:
            ready(service_port, "/readyz")
            ready(bare_port, "/v1/ping")
            body = {
                "prompt": "a photo of <asset0> and <asset1>",
                "steps": 2,
                "boxes": {"<asset0>": [0.05, 0.2, 0.45, 0.8], "<asset1>": [0.55, 0.2, 0.95, 0.8]},
            }
            path = f"/v1/concepts/{concept_id}/syntheses"
            submits = [_post_json(path, keys[i % len(keys)], body) for i in range(submitters)]
            submit = asyncio.run(
                _closed_loop(service_port, submits, submitters, seconds / 2, warmup)
            )
            with httpx.Client(
                base_url=f"http://127.0.0.1:{service_port}",
                timeout=30,
                headers={"Authorization": f"Bearer {keys[0]}"},
            ) as http:
                ids = [j["id"] for j in http.get("/v1/jobs?limit=100").json()["data"]]
            polls = [
                _get(f"/v1/jobs/{ids[i % len(ids)]}", keys[i % len(keys)]) for i in range(pollers)
            ]
            status = asyncio.run(_closed_loop(service_port, polls, pollers, seconds, warmup))
            bare = asyncio.run(
                _closed_loop(bare_port, [_get("/v1/ping")], pollers, seconds, warmup)
            )
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
            log.close()
            redis_flush(broker)
    return {
        "pollers": pollers,
        "seconds": seconds,
        "warmup_seconds": warmup,
        "cpus": os.cpu_count(),
        "access_log": access_log,
        "submit_synthesis": submit,
        "poll_job_status": status,
        "bare_fastapi_json": bare,
        "status_vs_bare_throughput": round(status["rps"] / bare["rps"], 3),
    }


def redis_flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="per client")
    p.add_argument("--jobs", type=int, default=0, help="concepts to learn and synthesise")
    p.add_argument("--steps", type=int, default=2, help="steps per phase for --jobs")
    p.add_argument("--out", type=Path)
    p.add_argument("--compare", action="store_true", help="service vs bare endpoint (see top)")
    p.add_argument("--pollers", type=int, default=50, help="--compare: concurrent pollers")
    p.add_argument("--submitters", type=int, default=8, help="--compare: concurrent submitters")
    p.add_argument("--seconds", type=float, default=10.0, help="--compare: per measurement")
    p.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="--compare: unmeasured seconds of polling (and bare) load first",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="--compare: both servers log every request (default: neither does)",
    )
    args = p.parse_args(argv)
    if args.compare:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        text = json.dumps(
            compare(args.pollers, args.seconds, args.submitters, args.warmup, args.access_log),
            indent=2,
        )
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        return 0
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
