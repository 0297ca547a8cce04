"""A chaos soak on real processes: the whole service (two `mifo api` replicas, job workers,
the control worker and `mifo beat` on PostgreSQL, a Redis of its own and an S3 server) under
a steady load of learning and synthesis jobs from several tenants, while one fault every few
seconds kills, pauses, partitions or skews a piece of it. Then everything is healed, the
queue drains, and a checker compares what the clients were told with what the database and
the bucket hold (bench/chaos_check.py).

    python bench/chaos.py --seed 7 --syntheses 300 --learns 20 --fault-every 10 --json out.json
    python bench/chaos.py --seed 7 --syntheses 60 --learns 4 --baseline   # + a fault-free run
    python bench/chaos.py --faults blackhole_db --blackhole 6 8           # short stalls only

It prints the seed, a summary table (jobs, faults of each kind, the checker's findings, the
worst recovery, p50/p99 latency), one line per fault, and exits 1 unless no job was lost,
none was unexpected, none had two results and no object was orphaned.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth; MIFO_TEST_PG_ADMIN names the admin URL as
for the tests), `redis-server` and `faketime` on the PATH; runs the `tiny` model on the CPU.
The faults are bench/chaos_faults.py's; `run_soak(SoakConfig(...))` is the entry point the
short soak in tests/bench/test_chaos.py calls.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.server
import io
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import psycopg
import redis

if __package__ in (None, ""):  # run as a script: make `bench` and the service importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos_check import (  # noqa: E402
    TERMINAL,
    Evidence,
    Findings,
    Receipt,
    Snapshot,
    check,
    latencies,
    recovery,
)
from bench.chaos_faults import KINDS, BlackholeProxy, Injector, free_port  # noqa: E402
from bench.common import scene, table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIFO = [sys.executable, "-m", "mifo_cli"]
PG_ADMIN = os.environ.get("MIFO_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
BUCKET, STORAGE_PREFIX = "mifo-chaos", "soak"
STARTED = re.compile(r"job ([0-9a-f-]{36}): \d+ CPU thread")
ENDED = re.compile(r"job ([0-9a-f-]{36}): (succeeded|failed|canceled|skipped|superseded)\b")
RECONCILE_GRACE = 30.0  # core.reconcile.GRACE_SECONDS: lost messages are re-sent after it


@dataclass
class SoakConfig:
    """One soak. The lifecycle timings are short (a 10 s lease, a reconcile pass every 3 s)
    so that a fault's consequences play out within seconds, not the production minutes."""

    seed: int = 1
    syntheses: int = 300
    learns: int = 20
    tenants: int = 3
    workers: int = 3
    fault_every: float = 10.0
    faults: bool = True
    fault_kinds: tuple[str, ...] = KINDS
    blackhole_seconds: tuple[float, float] = (15.0, 30.0)  # how long a proxy stays silent
    duration: float | None = None  # seconds of load and faults; None: from the job count
    duplicate_rate: float = 0.05  # POSTs sent twice with one Idempotency-Key
    cancel_rate: float = 0.03
    lease_seconds: float = 10.0
    heartbeat_seconds: float = 2.0
    reconcile_seconds: float = 3.0
    maintenance_seconds: float = 10.0
    max_attempts: int = 3
    seconds_per_job: float = 6.0  # a worker's pace on a busy small CPU box: the drain's bound
    folder: Path | None = None  # logs and data; None: a temporary folder
    keep_logs: bool = False

    def load_seconds(self) -> float:
        if self.duration is not None:
            return self.duration
        return max(60.0, 0.5 * self.syntheses + 2.0 * self.learns)


@dataclass
class Incarnation:
    """One start of a service process: its log, and its clock's offset (faketime)."""

    name: str
    number: int
    proc: subprocess.Popen[bytes]
    log: Path
    skew: int


class Cluster:
    """The servers (a throwaway database, Redis, S3) and the service processes, each of
    which reaches PostgreSQL through a proxy of its own so that one can be cut off."""

    def __init__(self, config: SoakConfig, folder: Path) -> None:
        from core.settings import Settings

        self.config, self.folder = config, folder
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        (folder / "tmp").mkdir(exist_ok=True)
        db = f"mifo_chaos_{uuid.uuid4().hex[:12]}"
        self.db_name, self.pg_url = db, f"{PG_ADMIN.rsplit('/', 1)[0]}/{db}"
        self.db_url = self.pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
        self.workers = tuple(f"worker{i + 1}" for i in range(config.workers))
        self.apis = ("api1", "api2")
        self.api_ports = {name: free_port() for name in self.apis}
        self.redis_port, self.s3_port = free_port(), free_port()
        self.s3_url = f"http://127.0.0.1:{self.s3_port}"
        values = self._settings()
        self.settings = Settings(**values)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MIFO_")}
        self.env |= {f"MIFO_{k.upper()}": _env_value(v) for k, v in values.items()}
        self.env |= {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "TMPDIR": str(folder / "tmp"),
        }
        self.proxies: dict[str, BlackholeProxy] = {}
        self.incarnations: dict[str, list[Incarnation]] = {}
        self.redis: subprocess.Popen[bytes] | None = None
        self.moto: subprocess.Popen[bytes] | None = None
        self._stopping: set[str] = set()
        self._lock = threading.Lock()

    def _settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "database_url": self.db_url,
            "broker_url": f"redis://127.0.0.1:{self.redis_port}/0",
            "storage_url": f"s3://{BUCKET}/{STORAGE_PREFIX}",
            "s3_endpoint_url": self.s3_url,
            "data_dir": str(self.folder),
            "base_model": "tiny",
            "device": "cpu",
            "cpu_threads": 1,
            "url_signing_key": "chaos-signing-key",
            "max_active_jobs": 100_000,
            "rate_limit_per_second": 0,
            "webhook_allowed_networks": ["127.0.0.1/32"],
            "webhook_poll_seconds": 0.5,
            "webhook_backoff_seconds": 0.5,
            "lease_seconds": c.lease_seconds,
            "heartbeat_seconds": c.heartbeat_seconds,
            "reconcile_seconds": c.reconcile_seconds,
            "maintenance_interval_seconds": c.maintenance_seconds,
            "max_attempts": c.max_attempts,
            "progress_interval": 0.5,
            "access_log": False,
        }

    @property
    def services(self) -> tuple[str, ...]:
        return (*self.apis, *self.workers, "control", "beat")

    def command(self, name: str) -> list[str]:
        if name in self.apis:
            return ["api", "--port", str(self.api_ports[name])]
        if name in self.workers:
            return ["worker", "--queues", "learn,synthesize"]
        if name == "control":
            return ["worker", "--queues", "control", "--pool", "threads", "--concurrency", "2"]
        return ["beat"]

    # --- servers -------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _open(self) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        env = {**self.env, "MIFO_DATABASE_URL": self.db_url}
        subprocess.run([*MIFO, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
        self._start_redis()
        self._start_moto()
        for name in self.services:
            self.proxies[name] = BlackholeProxy(("127.0.0.1", 5432))
            self.start(name)
        for name in self.apis:
            if not self.wait_api(name, 120):
                raise RuntimeError(f"{name} never became ready: {self.tail(name)}")
        for name in self.workers:
            if not self.wait_worker(name, 120):
                raise RuntimeError(f"{name} never became ready: {self.tail(name)}")

    def _start_redis(self) -> None:
        cmd = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        self.redis = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.redis_port, socket_timeout=1)
        _until(lambda: _quietly(client.ping), 15, "redis-server did not start")

    def restart_redis(self, down: float) -> None:
        """SIGKILL: nothing is saved (no RDB, no AOF), so every queued message is gone."""
        assert self.redis is not None
        self.redis.kill()
        self.redis.wait()
        time.sleep(down)
        self._start_redis()

    def _start_moto(self) -> None:
        log = open(self.logs / "moto.log", "ab")  # noqa: SIM115 - the process keeps it
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)]
        self.moto = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        s3 = self.s3()
        _until(lambda: _quietly(s3.list_buckets), 30, "the S3 server did not start")
        s3.create_bucket(Bucket=BUCKET)

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def close(self) -> None:
        for name in list(self.incarnations):
            self.stop(name, signal.SIGTERM, grace=10)
        for proxy in self.proxies.values():
            proxy.close()
        for server in (self.redis, self.moto):
            if server is not None and server.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        with contextlib.suppress(psycopg.Error), psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    # --- service processes ---------------------------------------------------------------

    def start(self, name: str, skew: int = 0) -> None:
        runs = self.incarnations.setdefault(name, [])
        log = self.logs / f"{name}.{len(runs)}.log"
        cmd = [*MIFO, *self.command(name)]
        if skew:  # libfaketime; monotonic clocks move with it (DONT_FAKE_MONOTONIC unset)
            cmd = ["faketime", "-f", f"{skew:+d}s", *cmd]
        proxied = self.db_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.proxies[name].port}")
        env = {**self.env, "MIFO_DATABASE_URL": proxied}
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=out, stderr=out, start_new_session=True
            )
        runs.append(Incarnation(name, len(runs), proc, log, skew))
        with self._lock:
            self._stopping.discard(name)

    def current(self, name: str) -> Incarnation:
        return self.incarnations[name][-1]

    def alive(self, name: str) -> bool:
        return name in self.incarnations and self.current(name).proc.poll() is None

    def signal(self, name: str, sig: int) -> None:
        """Signal the whole process group (a prefork worker's children too)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.current(name).proc.pid, sig)

    def stop(self, name: str, sig: int, grace: float = 30) -> bool:
        """Signal the process group and wait until every member is gone (`faketime` forks
        the service as its child, and a prefork worker has children of its own), SIGKILL
        after `grace` seconds. True when it came to SIGKILL."""
        with self._lock:
            self._stopping.add(name)
        proc = self.current(name).proc
        self.signal(name, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.signal(name, sig)
        if _group_gone(proc, grace):
            return sig == signal.SIGKILL
        self.signal(name, signal.SIGKILL)
        _group_gone(proc, 10)
        return True

    def exited(self, exclude: set[str]) -> list[tuple[str, int]]:
        """Service processes that ended without being stopped: (name, exit code)."""
        with self._lock:
            stopping = set(self._stopping)
        found = []
        for name in self.services:
            if name in exclude or name in stopping or name not in self.incarnations:
                continue
            code = self.current(name).proc.poll()
            if code is not None:
                found.append((name, code))
        return found

    def wait_api(self, name: str, timeout: float) -> bool:
        url = f"http://127.0.0.1:{self.api_ports[name]}/readyz"

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(url, timeout=5).status_code == 200
            return False

        return _poll(lambda: ready() or not self.alive(name), timeout) and self.alive(name)

    def wait_worker(self, name: str, timeout: float) -> bool:
        """Celery logs `celery@<host> ready.` once it consumes."""
        log = self.current(name).log

        def ready() -> bool:
            return " ready." in log.read_text(errors="replace") or not self.alive(name)

        return _poll(ready, timeout) and self.alive(name)

    def last_error(self, name: str) -> str | None:
        """The last CRITICAL (else ERROR) line of the process' current log."""
        lines = self.current(name).log.read_text(errors="replace").splitlines()
        for level in ("CRITICAL", "ERROR"):
            found = [line for line in lines if f" {level} " in line]
            if found:
                return found[-1][:500]
        return None

    def tail(self, name: str, chars: int = 3000) -> str:
        return self.current(name).log.read_text(errors="replace")[-chars:]

    # --- the jobs as the database and the workers' logs see them ---------------------------

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg_url, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql, args).fetchall()

    def queued_jobs(self) -> set[str]:
        return {r[0] for r in self.query("SELECT id::text FROM jobs WHERE status = 'queued'")}

    def running_on(self, worker: str) -> tuple[set[str], str]:
        """The job running on `worker` now, and how that is known. A worker logs `job <id>:
        N CPU thread(s)` when it starts a job and `job <id>: <outcome>` when it ends; a job
        the database has running that no live worker's log claims is the idle worker's when
        exactly one is idle (it has not logged its start yet)."""
        running = {r[0] for r in self.query("SELECT id::text FROM jobs WHERE status = 'running'")}
        claims = {w: _current_job(self.current(w).log) for w in self.workers if self.alive(w)}
        mine = claims.get(worker)
        if mine is not None:
            return ({mine} & running), "log"
        unclaimed = running - {c for c in claims.values() if c}
        idle = [w for w, c in claims.items() if c is None]
        if unclaimed and idle == [worker] and len(unclaimed) == 1:
            return unclaimed, "elimination"
        if unclaimed and worker in idle:
            return set(), f"unknown ({len(unclaimed)} running jobs unclaimed by any log)"
        return set(), "none"

    def started_jobs(self, name: str, number: int) -> set[str]:
        """Every job one incarnation of a worker started."""
        text = self.incarnations[name][number].log.read_text(errors="replace")
        return set(STARTED.findall(text))


def _group_gone(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether the process group led by `proc` emptied within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        proc.poll()  # reaps the leader once it exits: a zombie still counts as a member
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _current_job(log: Path) -> str | None:
    current = None
    for line in log.read_text(errors="replace").splitlines():
        if started := STARTED.search(line):
            current = started.group(1)
        elif (ended := ENDED.search(line)) and ended.group(1) == current:
            current = None
    return current


def _env_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list) else str(value)


def _quietly(call: Callable[[], Any]) -> bool:
    try:
        call()
        return True
    except Exception:
        return False


def _poll(test: Callable[[], bool], timeout: float, every: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():
            return True
        time.sleep(every)
    return False


def _until(test: Callable[[], bool], timeout: float, message: str) -> None:
    if not _poll(test, timeout):
        raise RuntimeError(message)


class WebhookReceiver:
    """Records every delivery (its `webhook-id`, event type, job and status) and answers 204."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.receipts: list[Receipt] = []
        receipts, lock = self.receipts, threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                data = body.get("data", {})
                receipt = Receipt(
                    clock(),
                    self.headers["webhook-id"],
                    body.get("type"),
                    data.get("id"),
                    data.get("status"),
                )
                with lock:
                    receipts.append(receipt)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Monitor:
    """Reads every job's status and attempts from PostgreSQL twice a second and keeps each
    change with the harness' time: the timelines recovery times and latencies come from."""

    def __init__(self, pg_url: str, clock: Callable[[], float]) -> None:
        self.pg_url, self.clock = pg_url, clock
        self.timelines: dict[str, list[tuple[float, str, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-monitor")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psycopg.Error), self._connect() as conn:
                while not self._stop.wait(0.5):
                    self._read(conn)
            self._stop.wait(1)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg_url, autocommit=True, connect_timeout=5)

    def _read(self, conn: psycopg.Connection[Any]) -> None:
        now = self.clock()
        for job_id, status, attempts in conn.execute(
            "SELECT id::text, status, attempts FROM jobs"
        ).fetchall():
            line = self.timelines.setdefault(job_id, [])
            if not line or line[-1][1:] != (status, attempts):
                line.append((now, status, attempts))

    def close(self) -> None:
        """One last read, then stop."""
        if self._stop.is_set():
            return
        with contextlib.suppress(psycopg.Error), self._connect() as conn:
            self._read(conn)
        self._stop.set()
        self._thread.join()


# --- the load --------------------------------------------------------------------------------


@dataclass
class Op:
    """One job-creating POST of the plan."""

    index: int
    kind: str  # learn | synthesize
    tenant: str
    at: float  # seconds after the load starts
    key: str  # its Idempotency-Key
    steps: int
    seed: int
    events: list[str] | None  # webhook_events; None: all of them
    repeat: str | None = None  # after | concurrent: sent twice with the same key
    cancel_after: float | None = None


def plan(config: SoakConfig, tenants: list[str], seconds: float) -> list[Op]:
    """The load, from the seed alone: syntheses and learns shuffled and spread evenly over
    `seconds`; a few repeated with their key, a few canceled soon after."""
    rng = random.Random(f"load-{config.seed}")
    kinds = ["synthesize"] * config.syntheses + ["learn"] * config.learns
    rng.shuffle(kinds)
    ops = []
    for i, kind in enumerate(kinds):
        repeat = None
        if rng.random() < config.duplicate_rate:
            repeat = rng.choice(("after", "concurrent"))
        cancel = rng.uniform(0.0, 2.0) if rng.random() < config.cancel_rate else None
        ops.append(
            Op(
                index=i,
                kind=kind,
                tenant=rng.choice(tenants),
                at=seconds * i / max(1, len(kinds)),
                key=f"chaos-{config.seed}-{i}",
                steps=rng.randint(2, 4) if kind == "synthesize" else rng.randint(2, 5),
                seed=rng.randrange(10_000),
                events=["completed"] if rng.random() < 0.75 else None,
                repeat=repeat,
                cancel_after=cancel,
            )
        )
    return ops


@dataclass
class Ledger:
    """What the clients were told: every job id ever answered, and the details checked."""

    clock: Callable[[], float]
    accepted: dict[str, float] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)
    idempotency: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    slowest: list[dict[str, Any]] = field(default_factory=list)  # the slowest POSTs
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, job_id: str) -> None:
        with self._lock:
            self.accepted.setdefault(job_id, self.clock())

    def answered(self, path: str, key: str, seconds: float, seen: list[str]) -> None:
        """One POST's answers, the retries included; the slowest few are kept."""
        with self._lock:
            self.answers.update(seen)
            post = {"path": path, "key": key, "seconds": round(seconds, 1), "answers": seen}
            self.slowest.append(post)
            self.slowest.sort(key=lambda s: -s["seconds"])
            del self.slowest[5:]


class Client:
    """Clients of the public API: round-robin over the replicas; a connection error, 5xx,
    429 or a 409 for a key still in flight is retried with the same Idempotency-Key, which
    is what makes retrying a submission safe."""

    RETRY_409 = ("idempotency_key_in_use", "concurrent_change")

    def __init__(self, bases: list[str], keys: dict[str, str], ledger: Ledger) -> None:
        self.keys, self.ledger = keys, ledger
        self.http = httpx.Client(
            timeout=20, limits=httpx.Limits(max_connections=100, max_keepalive_connections=50)
        )
        self._bases = itertools.cycle(bases)
        self._lock = threading.Lock()
        self.give_up_seconds = 300.0

    def _base(self) -> str:
        with self._lock:
            return next(self._bases)

    def post(self, tenant: str, path: str, key: str, **request: Any) -> httpx.Response | None:
        """The first answer that is not worth retrying; None once retrying gave up."""
        headers = {"Authorization": f"Bearer {self.keys[tenant]}", "Idempotency-Key": key}
        began = time.monotonic()
        seen: list[str] = []
        r: httpx.Response | None = None
        for attempt in itertools.count():
            try:
                r = self.http.post(self._base() + path, headers=headers, **request)
            except httpx.HTTPError as exc:
                r, wait = None, 0.5
                seen.append(type(exc).__name__)
            else:
                seen.append(str(r.status_code))
                if not self._retry(r):
                    break
                wait = min(3.0, float(r.headers.get("retry-after") or 1))
                seen[-1] += f":{_problem_type(r)}"
            if time.monotonic() - began > self.give_up_seconds:
                r = None
                break
            time.sleep(min(3.0, wait * (1 + 0.5 * min(attempt, 4))))
        self.ledger.answered(path, key, time.monotonic() - began, seen)
        return r

    def _retry(self, r: httpx.Response) -> bool:
        """Worth repeating with the same key: the service was unavailable or busy."""
        if r.status_code >= 500 or r.status_code == 429:
            return True
        if r.status_code == 409:
            with contextlib.suppress(ValueError):
                return str(r.json().get("type", "")).endswith(self.RETRY_409)
        return False

    def close(self) -> None:
        self.http.close()


class Load:
    """Runs the plan's POSTs at their times on a thread pool, records each answer."""

    def __init__(self, client: Client, ledger: Ledger, hook: str, concepts: dict[str, str]):
        self.client, self.ledger, self.hook, self.concepts = client, ledger, hook, concepts
        image, masks = scene(size=96, n=2, seed=3)
        self.files = [("image", ("scene.png", _png(image), "image/png"))]
        self.files += [("masks", (f"m{i}.png", _png(m), "image/png")) for i, m in enumerate(masks)]

    def run(self, ops: list[Op], threads: int = 24) -> None:
        t0 = time.monotonic()

        def one(op: Op) -> None:
            time.sleep(max(0.0, t0 + op.at - time.monotonic()))
            self.submit(op)

        with ThreadPoolExecutor(threads, thread_name_prefix="chaos-client") as pool:
            for future in [pool.submit(one, op) for op in ops]:
                future.result()

    def submit(self, op: Op) -> str | None:
        if op.repeat == "concurrent":  # two copies at once: one waits on the other's key
            with ThreadPoolExecutor(2) as pool:
                job_id, again = pool.map(lambda _: self._post(op), range(2))
            self._record_repeat(op, job_id, [again])
        else:
            job_id = self._post(op)
            if op.repeat == "after" and job_id is not None:
                self._record_repeat(op, job_id, [self._post(op)])
        if job_id is None:
            return None
        if op.cancel_after is not None:
            time.sleep(op.cancel_after)
            self._cancel(op, job_id)
        return job_id

    def _post(self, op: Op) -> str | None:
        if op.kind == "synthesize":
            body = {
                "prompt": "a photo of <asset0> and <asset1>",
                "boxes": {"<asset0>": [0.0, 0.1, 0.5, 0.9], "<asset1>": [0.5, 0.1, 1.0, 0.9]},
                "num_images": 1,
                "steps": op.steps,
                "seed": op.seed,
                "webhook_url": self.hook,
                "webhook_events": op.events,
            }
            path = f"/v1/concepts/{self.concepts[op.tenant]}/syntheses"
            r = self.client.post(op.tenant, path, op.key, json=body)
        else:
            options = {
                "phase1_steps": op.steps,
                "phase2_steps": 1,
                "reward_steps": 1,
                "diagnostic_timesteps": [100],
                "seed": op.seed,
            }
            form = {"options": json.dumps(options), "webhook_url": self.hook}
            if op.events:
                form["webhook_events"] = ",".join(op.events)
            r = self.client.post(op.tenant, "/v1/concepts", op.key, files=self.files, data=form)
        if r is None or r.status_code != 202:
            detail = "gave up retrying" if r is None else f"{r.status_code} {r.text[:300]}"
            self.ledger.refused.append({"op": op.index, "key": op.key, "answer": detail})
            return None
        body = r.json()
        job_id = str(body["job"]["id"] if "job" in body else body["id"])
        self.ledger.accept(job_id)
        return job_id

    def _record_repeat(self, op: Op, first: str | None, again: list[str | None]) -> None:
        """The same POST sent twice with one key must answer one job."""
        self.ledger.idempotency.append(
            {"key": op.key, "mode": op.repeat, "first": first, "repeated": again}
        )

    def _cancel(self, op: Op, job_id: str) -> None:
        r = self.client.post(op.tenant, f"/v1/jobs/{job_id}/cancel", f"{op.key}-cancel")
        answered = None
        if r is not None and r.status_code == 202:
            answered = r.json().get("status")
        code = None if r is None else r.status_code
        self.ledger.cancels.append({"job": job_id, "code": code, "answered": answered})


def _problem_type(r: httpx.Response) -> str:
    """The last part of a problem JSON's `type`, or the start of the body."""
    try:
        return str(r.json().get("type", "")).rsplit("/", 1)[-1]
    except ValueError:
        return r.text[:40]


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# --- the soak --------------------------------------------------------------------------------


@dataclass
class Report:
    seed: int
    faults_enabled: bool
    config: dict[str, Any]
    wall_seconds: float
    phases: dict[str, float]  # seconds since the start at which each phase ended
    submitted: int
    accepted: int
    answers: dict[str, int]
    refused: list[dict[str, Any]]
    slowest_posts: list[dict[str, Any]]  # with every answer each retry got
    faults: list[dict[str, Any]]
    fault_counts: dict[str, int]
    crashes: list[dict[str, Any]]
    not_drained: list[str]
    outcomes: dict[str, int]  # accepted jobs by final status
    findings: dict[str, list[Any]]
    counts: dict[str, int]
    latency: dict[str, float | None]
    worst_recovery_s: float | None  # the slowest fault until every job it hit was back
    worst_first_back_s: float | None  # the slowest fault until the first job it hit was back
    unrecovered_faults: list[int]
    skewed_jobs: dict[str, str]  # job started on a clock-skewed worker -> worker#incarnation
    paused_jobs: dict[str, str]  # job running on a worker when it was paused -> worker
    logs: str | None
    baseline: dict[str, Any] | None = None

    @property
    def clean(self) -> bool:
        """No job lost, none unexpected, no duplicated result, no orphan object."""
        return all(self.counts[k] == 0 for k in ("lost", "unexpected", "duplicated", "orphans"))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"clean": self.clean}

    def table(self) -> str:
        c = self.counts
        slow = [p["seconds"] for p in self.slowest_posts]
        ended = [self.outcomes.get(s, 0) for s in TERMINAL]
        failed = Counter(str(f["error_type"]) for f in self.findings["failed"]).items()
        rows: list[tuple[str, Any]] = [
            ("seed", self.seed),
            ("wall time (s)", round(self.wall_seconds, 1)),
            *((f"  {name} at (s)", at) for name, at in self.phases.items()),
            ("jobs submitted (POSTs planned)", self.submitted),
            ("jobs accepted (distinct ids)", self.accepted),
            ("submissions refused / given up", len(self.refused)),
            ("slowest POST, retries included (s)", max(slow, default=None)),
        ]
        rows += [(f"faults: {kind}", n) for kind, n in sorted(self.fault_counts.items())]
        rows += [
            ("jobs succeeded / failed / canceled", " / ".join(str(n) for n in ended)),
            ("jobs failed, by error type", ", ".join(f"{k} {n}" for k, n in failed) or 0),
            ("jobs run on clock-skewed workers", len(self.skewed_jobs)),
            ("jobs on workers when paused", len(self.paused_jobs)),
            ("processes that exited by themselves", len(self.crashes)),
            ("not drained", len(self.not_drained)),
            ("lost", c["lost"]),
            ("unexpected", c["unexpected"]),
            ("duplicated results", c["duplicated"]),
            ("orphan objects", c["orphans"]),
            ("missing artifacts", c["missing_artifacts"]),
            ("over max attempts (not worker_lost)", c["over_attempts"]),
            ("paused/skewed-worker jobs failed", c["paused_or_skewed_failed"]),
            ("cancels not kept", c["cancels_not_kept"]),
            ("completed webhooks missing", c["webhooks_missing"]),
            ("idempotency violations", c["idempotency_violations"]),
            ("storage clean-ups pending", c["pending_cleanups"]),
            ("worst recovery (s), every job hit back", self.worst_recovery_s),
            ("worst recovery (s), first job hit back", self.worst_first_back_s),
            ("faults never recovered", len(self.unrecovered_faults)),
        ]
        rows += _latency_rows("chaos", self.latency)
        if self.baseline is not None:
            rows += _latency_rows("baseline", self.baseline["latency"])
        return table(["", "value"], rows)

    def fault_table(self) -> str:
        """One line per fault: when, what it hit (and how that is known), its recovery."""
        rows = [
            (
                f["number"],
                f["kind"],
                f["target"],
                f["started"],
                f["healed"],
                ", ".join(f"{k}={v}" for k, v in f["detail"].items()),
                len(f["affected"]),
                f["attribution"],
                f["first_back_seconds"],
                f["recovery_seconds"],
                f["error"],
            )
            for f in self.faults
        ]
        head = ["#", "fault", "target", "at s", "healed s", "detail", "jobs hit", "known by"]
        return table([*head, "first back s", "all back s", "error"], rows)


def _latency_rows(name: str, lat: dict[str, float | None]) -> list[tuple[str, Any]]:
    return [
        (
            f"{name} latency p50/p99 (s), created->finished",
            f"{lat['p50_db_s']} / {lat['p99_db_s']}",
        ),
        (
            f"{name} latency p50/p99 (s), observed",
            f"{lat['p50_observed_s']} / {lat['p99_observed_s']}",
        ),
    ]


def run_soak(config: SoakConfig, baseline: bool = False) -> Report:
    """The soak with faults; with `baseline`, first the same load without any, whose
    latencies the report carries for comparison."""
    base = None
    if baseline:
        calm = dataclasses.replace(config, faults=False)
        if config.folder is not None:
            calm.folder = config.folder / "baseline"
        base = _soak(calm).as_dict()
    report = _soak(config)
    report.baseline = base
    return report


@contextlib.contextmanager
def _folder(config: SoakConfig) -> Iterator[Path]:
    if config.folder is not None:
        config.folder.mkdir(parents=True, exist_ok=True)
        yield config.folder
        return
    folder = Path(tempfile.mkdtemp(prefix="mifo-chaos-"))
    try:
        yield folder
    finally:
        if not config.keep_logs:
            shutil.rmtree(folder, ignore_errors=True)


def _soak(config: SoakConfig) -> Report:
    t0 = time.monotonic()
    clock = lambda: round(time.monotonic() - t0, 2)  # noqa: E731
    phases: dict[str, float] = {}
    with _folder(config) as folder, Cluster(config, folder) as cluster:
        phases["servers_and_processes_up"] = clock()
        receiver = WebhookReceiver(clock)
        monitor = Monitor(cluster.pg_url, clock)
        ledger = Ledger(clock)
        keys = _tenants(cluster, config.tenants)
        bases = [f"http://127.0.0.1:{port}" for port in cluster.api_ports.values()]
        client = Client(bases, keys, ledger)
        try:
            concepts = _setup(cluster, Load(client, ledger, receiver.url, {}), sorted(keys))
            phases["set_up_concepts_ready"] = clock()
            load = Load(client, ledger, receiver.url, concepts)
            ops = plan(config, sorted(keys), config.load_seconds() * 0.85)
            injector = _chaos(cluster, config, load, ops, clock)
            phases["load_and_faults_done"] = clock()
            _heal(cluster)
            not_drained = _drain(cluster, config, ledger)
            phases["drained"] = clock()
            time.sleep(config.maintenance_seconds * 1.5)  # one maintenance pass at least
            monitor.close()
            evidence = _evidence(cluster, config, ledger, receiver, monitor, injector)
            snap = _snapshot(cluster)
            phases["checked"] = clock()
        finally:
            client.close()
            receiver.close()
            monitor.close()
        keep = config.folder is not None or config.keep_logs
        run = Run(
            submitted=len(ops) + len(concepts),
            ledger=ledger,
            injector=injector,
            not_drained=not_drained,
            evidence=evidence,
            snap=snap,
            phases=phases,
            logs=str(folder) if keep else None,
        )
    return _report(config, clock(), run)


@dataclass
class Run:
    """Everything one soak gathered, for its report."""

    submitted: int
    ledger: Ledger
    injector: Injector
    not_drained: list[str]
    evidence: Evidence
    snap: Snapshot
    phases: dict[str, float]
    logs: str | None


def _tenants(cluster: Cluster, n: int) -> dict[str, str]:
    """n tenants with a key each, made the way `mifo keys create` makes them."""
    from core import auth
    from core.db import make_engine, make_sessionmaker, session_scope

    engine = make_engine(cluster.db_url)
    keys = {}
    with session_scope(make_sessionmaker(engine)) as s:
        for i in range(n):
            tenant = auth.get_or_create_tenant(s, f"chaos-{i}")[0]
            keys[f"chaos-{i}"] = auth.create_key(s, tenant=tenant)[1]
    engine.dispose()
    return keys


def _setup(cluster: Cluster, load: Load, tenants: list[str]) -> dict[str, str]:
    """One ready concept per tenant, before any fault: what the syntheses draw on."""
    ops = [
        Op(i, "learn", t, 0.0, f"chaos-setup-{i}", 3, i, ["completed"])
        for i, t in enumerate(tenants)
    ]
    with ThreadPoolExecutor(len(ops)) as pool:
        jobs = list(pool.map(load.submit, ops))
    if None in jobs:
        raise RuntimeError(f"set-up learning refused: {load.ledger.refused}")
    sql = "SELECT status, concept_id::text FROM jobs WHERE id = %s"

    def ended() -> bool:
        return all(cluster.query(sql, job)[0][0] in TERMINAL for job in jobs)

    _until(ended, 240, "the set-up learning jobs did not end")
    rows = [cluster.query(sql, job)[0] for job in jobs]
    if any(status != "succeeded" for status, _ in rows):
        raise RuntimeError(f"set-up learning failed: {rows}; {cluster.tail(cluster.workers[0])}")
    return {t: concept for t, (_, concept) in zip(tenants, rows, strict=True)}


def _chaos(
    cluster: Cluster, config: SoakConfig, load: Load, ops: list[Op], clock: Callable[[], float]
) -> Injector:
    """The load, with faults (when enabled) for as long as it is being submitted and at
    least `load_seconds`; returns once every fault healed itself."""
    injector = Injector(
        cluster,
        seed=config.seed,
        every=config.fault_every,
        kinds=config.fault_kinds,
        blackhole_seconds=config.blackhole_seconds,
        clock=clock,
    )
    if config.faults:
        injector.start()
    started = time.monotonic()
    load.run(ops)
    time.sleep(max(0.0, config.load_seconds() - (time.monotonic() - started)))
    if config.faults:
        injector.stop()
    return injector


def _heal(cluster: Cluster) -> None:
    """Everything back: proxies forwarding, no process stopped, every process and Redis up.
    A worker's skewed clock may stay."""
    for proxy in cluster.proxies.values():
        proxy.resume()
    for name in cluster.services:
        if cluster.alive(name):
            cluster.signal(name, signal.SIGCONT)
        else:
            cluster.start(name)
    client = redis.Redis(port=cluster.redis_port, socket_timeout=1)
    if not _quietly(client.ping):
        cluster.restart_redis(0)
    for name in cluster.apis:
        cluster.wait_api(name, 90)


def _drain(cluster: Cluster, config: SoakConfig, ledger: Ledger) -> list[str]:
    """Wait for every accepted job to end, bounded: a lease to lapse, the reconciler to
    notice and re-send lost messages (its grace), the backlog at the workers' pace, and a
    margin; then for the webhook outbox to empty. The jobs still not ended, by id."""
    active = cluster.query("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
    backlog = active[0][0] * config.seconds_per_job / max(1, config.workers)
    bound = 2 * config.lease_seconds + 3 * config.reconcile_seconds + RECONCILE_GRACE + 60
    deadline = time.monotonic() + bound + backlog

    def pending() -> list[str]:
        rows = dict(cluster.query("SELECT id::text, status FROM jobs"))
        return sorted(j for j in ledger.accepted if rows.get(j) not in TERMINAL)

    while (left := pending()) and time.monotonic() < deadline:
        time.sleep(1)
    outbox = "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
    _poll(lambda: cluster.query(outbox)[0][0] == 0, 30, every=1)
    return left


def _evidence(
    cluster: Cluster,
    config: SoakConfig,
    ledger: Ledger,
    receiver: WebhookReceiver,
    monitor: Monitor,
    injector: Injector,
) -> Evidence:
    skewed: dict[str, str] = {}
    paused: dict[str, str] = {}
    for fault in injector.faults:
        if fault.kind == "skew_worker" and "incarnation" in fault.detail:
            for job in cluster.started_jobs(fault.target, fault.detail["incarnation"]):
                skewed[job] = f"{fault.target}#{fault.detail['incarnation']}"
        if fault.kind == "pause_worker":
            paused |= {job: fault.target for job in fault.affected}
    return Evidence(
        accepted=dict(ledger.accepted),
        idempotency=list(ledger.idempotency),
        cancels=list(ledger.cancels),
        receipts=list(receiver.receipts),
        timelines=monitor.timelines,
        faults=injector.faults,
        skewed_jobs=skewed,
        paused_jobs=paused,
        max_attempts=config.max_attempts,
    )


def _snapshot(cluster: Cluster) -> Snapshot:
    """The rows and the bucket as they are now, read directly."""
    cols = "id::text, kind, status, attempts, losses, error_type, error_message, "
    cols += "concept_id::text, webhook_url, webhook_events, created_at, finished_at"
    names = [c.strip().removesuffix("::text") for c in cols.split(",")]
    jobs = {
        r[0]: dict(zip(names, r, strict=True)) for r in cluster.query(f"SELECT {cols} FROM jobs")
    }
    concepts = {
        r[0]: {"status": r[1], "files": r[2]}
        for r in cluster.query("SELECT id::text, status, files FROM concepts")
    }
    artifacts = [
        {"key": r[0], "job_id": r[1], "concept_id": r[2]}
        for r in cluster.query("SELECT key, job_id::text, concept_id::text FROM artifacts")
    ]
    deliveries = [
        {"id": r[0], "job_id": r[1], "event": r[2], "status": r[3], "due_in_s": r[4]}
        for r in cluster.query(
            "SELECT id::text, job_id::text, event, status, "
            "round(extract(epoch FROM next_attempt_at - now())::numeric, 1)::float "
            "FROM webhook_deliveries"
        )
    ]
    cleanups = [r[0] for r in cluster.query("SELECT prefix FROM storage_cleanups")]
    prefix = f"{STORAGE_PREFIX}/"
    objects = set()
    pages = cluster.s3().get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=BUCKET, Prefix=f"{prefix}concepts/"):
        objects |= {o["Key"].removeprefix(prefix) for o in page.get("Contents", [])}
    return Snapshot(jobs, concepts, artifacts, deliveries, cleanups, objects)


def _report(config: SoakConfig, wall: float, run: Run) -> Report:
    findings: Findings = check(run.evidence, run.snap)
    faults = run.injector.faults
    for fault in faults:
        fault.recovery_seconds, fault.first_back_seconds = recovery(fault, run.evidence.timelines)
    recovered = [f.recovery_seconds for f in faults if f.recovery_seconds is not None]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(config).items()}
    return Report(
        seed=config.seed,
        faults_enabled=config.faults,
        config=settings,
        wall_seconds=wall,
        phases=run.phases,
        submitted=run.submitted,
        accepted=len(run.ledger.accepted),
        answers=dict(run.ledger.answers),
        refused=list(run.ledger.refused),
        slowest_posts=list(run.ledger.slowest),
        faults=[f.as_dict() for f in faults],
        fault_counts=dict(Counter(f.kind for f in faults)),
        crashes=list(run.injector.crashes),
        not_drained=run.not_drained,
        outcomes=dict(
            Counter(
                str(run.snap.jobs[j]["status"]) if j in run.snap.jobs else "missing"
                for j in run.ledger.accepted
            )
        ),
        findings=dict(vars(findings)),
        counts=findings.counts(),
        latency=latencies(run.evidence, run.snap),
        worst_recovery_s=max(recovered, default=None),
        worst_first_back_s=max(
            (f.first_back_seconds for f in faults if f.first_back_seconds is not None),
            default=None,
        ),
        unrecovered_faults=[f.number for f in faults if f.recovery_seconds is None],
        skewed_jobs=run.evidence.skewed_jobs,
        paused_jobs=run.evidence.paused_jobs,
        logs=run.logs,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=None, help="Default: a random one (printed).")
    p.add_argument("--syntheses", type=int, default=300)
    p.add_argument("--learns", type=int, default=20)
    p.add_argument("--tenants", type=int, default=3)
    p.add_argument("--fault-every", type=float, default=10.0, help="Seconds between faults.")
    p.add_argument("--duration", type=float, default=None, help="Seconds of load and faults.")
    p.add_argument("--no-faults", action="store_true", help="The load alone.")
    p.add_argument(
        "--faults", default=",".join(KINDS), help="Kinds to inject, comma-separated (default: all)."
    )
    p.add_argument(
        "--blackhole",
        type=float,
        nargs=2,
        default=(15.0, 30.0),
        metavar=("MIN", "MAX"),
        help="Seconds a database proxy stays silent (default: 15 30).",
    )
    p.add_argument("--baseline", action="store_true", help="Also run the load fault-free.")
    p.add_argument("--json", type=Path, default=None, help="Write the report here.")
    p.add_argument("--keep-logs", type=Path, default=None, help="Keep logs in this folder.")
    args = p.parse_args(argv)
    unknown = set(args.faults.split(",")) - set(KINDS) - {""}
    if unknown:
        p.error(f"unknown fault kinds {sorted(unknown)}; choose among {', '.join(KINDS)}")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    print(f"chaos soak: seed {seed}", flush=True)
    config = SoakConfig(
        seed=seed,
        syntheses=args.syntheses,
        learns=args.learns,
        tenants=args.tenants,
        fault_every=args.fault_every,
        duration=args.duration,
        faults=not args.no_faults,
        fault_kinds=tuple(k for k in args.faults.split(",") if k),
        blackhole_seconds=tuple(args.blackhole),
        folder=args.keep_logs,
    )
    report = run_soak(config, baseline=args.baseline)
    print(report.table())
    if report.faults:
        print(f"\n{report.fault_table()}")
    for post in report.slowest_posts[:3]:
        print(f"\nslow POST: {post}")
    for crash in report.crashes:
        print(f"\nexited by itself (restarted): {crash}")
    for name, items in report.findings.items():
        if items:
            print(f"\n{name} ({len(items)}):")
            for item in items[:20]:
                print(f"  {item}")
    if args.json is not None:
        print(f"wrote {write_json('chaos', report.as_dict(), args.json)}")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
