"""Crash safety with real processes: `mifo api`, `mifo worker`, `mifo beat` and the control
worker on PostgreSQL and Redis, the tiny model, local object storage; `mifo serve` on its
own. A worker's process group killed mid-job, `mifo serve` stopped with Ctrl-C, a broker
restarted without persistence, an API restarted, a concept deleted while syntheses are
submitted, a database that goes away or freezes. Lease and reconcile settings are the
defaults: the recovery bounds asserted here are the ones docs/service.md states."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select, update

from core import auth
from core.db import make_engine, make_sessionmaker, session_scope, upgrade
from core.models import Artifact, Concept, Job, utcnow
from core.storage import LocalStorage
from tests.helpers.db import throwaway_postgres
from tests.helpers.images import encode, make_scene
from tests.helpers.servers import TcpProxy, free_port

pytestmark = pytest.mark.slow

MIFO = [sys.executable, "-m", "mifo_cli"]
ROOT = Path(__file__).resolve().parents[2]
RECOVERY_SECONDS = 60  # docs/service.md: the bound for a lost worker and a restarted broker


class Stack:
    def __init__(self, tmp: Path, db: str, broker: str, proxy: TcpProxy) -> None:
        self.tmp, self.proxy, self.port = tmp, proxy, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        proxied = db.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        self.env = {
            **os.environ,
            "MIFO_DATABASE_URL": db,
            "MIFO_BROKER_URL": broker,
            "MIFO_STORAGE_URL": (tmp / "objects").as_uri(),
            "MIFO_BASE_MODEL": "tiny",
            "MIFO_DEVICE": "cpu",
            "MIFO_PROGRESS_INTERVAL": "0.2",
            "MIFO_DATA_DIR": str(tmp),
            "MIFO_URL_SIGNING_KEY": "test-signing",
            "TMPDIR": str(tmp),
        }
        self.api_env = {**self.env, "MIFO_DATABASE_URL": proxied}
        self.storage = LocalStorage(tmp / "objects")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        engine = make_engine(db)
        self.sessions = make_sessionmaker(engine)
        with session_scope(self.sessions) as s:
            _, key = auth.create_key(s, tenant=auth.get_or_create_tenant(s, "crash")[0])
        self.http = httpx.Client(
            base_url=self.base, timeout=30, headers={"Authorization": f"Bearer {key}"}
        )

    def start(self, name: str, *args: str) -> None:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        env = self.api_env if args[0] == "api" else self.env
        self.procs[name] = subprocess.Popen(
            [*MIFO, *args], env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True
        )

    def duties(self) -> None:
        """Production's home of the periodic duties: one beat, one control worker."""
        self.start("beat", "beat")
        self.start("control", "worker", "--queues", "control", "--pool", "threads")

    def api(self, name: str = "api") -> None:
        self.start(name, "api", "--port", str(self.port))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/readyz").status_code == 200:
                    return
            time.sleep(0.3)
        raise AssertionError("the API never became ready")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a prefork worker's children too)."""
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(30)

    def learn(self, steps: int) -> dict[str, Any]:
        image, masks = make_scene()
        files = [("image", ("s.png", encode(image), "image/png"))]
        files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
        options = {
            "phase1_steps": steps,
            "phase2_steps": 1,
            "reward_steps": 1,
            "diagnostic_timesteps": [100],
        }
        r = self.http.post("/v1/concepts", files=files, data={"options": json.dumps(options)})
        assert r.status_code == 202, r.text
        return r.json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def until(self, job_id: str, test: Any, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError):
                job = self.job(job_id)
                if test(job):
                    return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id}: {self.job(job_id)}")

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)
        self.http.close()
        for log in sorted(self.tmp.glob("*.log")):  # shown by pytest when a test failed
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    broker = f"redis://127.0.0.1:6379/{random.randint(1, 13)}"
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    with throwaway_postgres() as db:
        upgrade(db)
        s = Stack(tmp_path, db, broker, proxy)
        try:
            yield s
        finally:
            s.close()
            proxy.stop()
            redis.Redis.from_url(broker).flushdb()


def done(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "canceled")


def test_a_killed_worker_group_loses_its_job_to_another_worker_within_a_minute(
    stack: Stack,
) -> None:
    """The production split: prefork workers, beat and the control worker. The whole process
    group of the worker running the job is SIGKILLed: no chance to clean up or acknowledge.
    Its lease lapses and the reconciler queues the job again, long before Redis' visibility
    timeout (6 h) would hand out the message again."""
    stack.api()
    stack.duties()
    stack.start("worker1", "worker")
    created = stack.learn(steps=40)
    job_id, concept_id = created["job"]["id"], created["concept"]["id"]
    stack.until(job_id, lambda j: j["status"] == "running" and (j["progress"]["step"] or 0) >= 1)
    stack.start("worker2", "worker")
    killed = time.monotonic()
    stack.kill("worker1")
    assert stack.job(job_id)["status"] == "running"
    stack.until(job_id, lambda j: j["attempts"] == 2 and j["status"] == "running", RECOVERY_SECONDS)
    print(
        f"recovery: running again on another worker {time.monotonic() - killed:.1f} s after the kill"
    )
    job = stack.until(job_id, done)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    with stack.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Concept)) == 1
        keys = {a.key for a in s.scalars(select(Artifact))}
        assert s.get(Job, uuid.UUID(job_id)).losses == 1  # type: ignore[union-attr]
    stored = set(stack.storage.keys("concepts/"))
    assert all(k.startswith(f"concepts/{concept_id}/") for k in stored)
    assert keys <= stored  # every artifact is there ...
    learned = {k for k in stored if "/concept/" in k}
    folder = f"concepts/{concept_id}/concept/attempt-2/"  # ... and one concept's files only
    assert f"{folder}concept.json" in learned and all(k.startswith(folder) for k in learned)
    assert not any(".part-" in k for k in stored)


def test_a_prefork_worker_told_to_stop_hands_its_running_job_back(stack: Stack) -> None:
    """SIGTERM to the worker's main process only, as Kubernetes stops a pod (scale-down, a
    rolling upgrade): the running job goes back to the queue at its next step, not counted as
    a loss, and another worker runs it to success."""
    stack.api()
    stack.duties()
    stack.start("worker1", "worker")  # prefork, as in the images
    job_id = stack.learn(steps=400)["job"]["id"]
    stack.until(job_id, lambda j: j["status"] == "running" and (j["progress"]["step"] or 0) >= 1)
    told = time.monotonic()
    stack.procs["worker1"].send_signal(signal.SIGTERM)  # the main process only
    job = stack.until(job_id, lambda j: j["status"] == "queued", 60)
    handed_back = time.monotonic() - told
    assert stack.procs.pop("worker1").wait(60) is not None  # the worker then exits
    with stack.sessions() as s:
        assert s.get(Job, uuid.UUID(job_id)).losses == 0  # type: ignore[union-attr]
    stack.start("worker2", "worker")
    job = stack.until(job_id, done, 400)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    print(f"recovery: a stopped worker handed its job back {handed_back:.1f} s after SIGTERM")


def test_a_job_whose_worker_is_gone_can_be_canceled_and_frees_its_slot(stack: Stack) -> None:
    """The only worker is SIGKILLed mid-job and none comes back: the job does not stay
    `running` at its last step; cancel and concept deletion end it."""
    stack.api()
    stack.duties()
    stack.start("worker", "worker", "--pool", "solo")
    first, second = stack.learn(steps=40), stack.learn(steps=40)
    job_id = first["job"]["id"]
    stack.until(job_id, lambda j: j["status"] == "running" and (j["progress"]["step"] or 0) >= 1)
    stack.kill("worker")
    job = stack.until(job_id, lambda j: j["status"] == "queued", RECOVERY_SECONDS)
    assert job["attempts"] == 1 and job["progress"]["step"] is None  # no stale progress
    canceled = stack.http.post(f"/v1/jobs/{job_id}/cancel").json()
    assert canceled["status"] == "canceled", canceled
    assert stack.http.delete(f"/v1/concepts/{second['concept']['id']}").status_code == 204
    assert stack.job(second["job"]["id"])["status"] == "canceled"
    with stack.sessions() as s:
        active = s.scalar(
            select(func.count()).select_from(Job).where(Job.status.in_(("queued", "running")))
        )
    assert active == 0  # neither holds one of the tenant's active-job slots


def test_queued_jobs_survive_a_broker_restarted_without_persistence(tmp_path: Path) -> None:
    """Three jobs wait in a Redis that keeps nothing on disk; Redis restarts and they are
    gone from it. Once a worker is back, they run within a minute."""
    port = free_port()
    redis_cmd = _redis_cmd(port, tmp_path)
    server = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
    broker = f"redis://127.0.0.1:{port}/0"
    _wait_for_redis(broker)
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    stack = None
    try:
        with throwaway_postgres() as db:
            upgrade(db)
            stack = Stack(tmp_path, db, broker, proxy)
            stack.api()
            stack.duties()
            queued = [stack.learn(steps=2)["job"]["id"] for _ in range(3)]
            assert redis.Redis.from_url(broker).llen("learn") == 3
            server.kill()  # SIGKILL: nothing is saved
            server.wait()
            server = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
            _wait_for_redis(broker)
            assert redis.Redis.from_url(broker).llen("learn") == 0
            stack.start("worker", "worker", "--pool", "solo")
            back = time.monotonic()
            for job_id in queued:
                stack.until(
                    job_id,
                    lambda j: j["status"] != "queued",
                    RECOVERY_SECONDS + back - time.monotonic(),
                )
            print(
                f"recovery: all 3 queued jobs started {time.monotonic() - back:.1f} s after the worker"
            )
            for job_id in queued:
                assert stack.until(job_id, done)["status"] == "succeeded"
            stack.close()
            stack = None
    finally:
        if stack is not None:
            stack.close()
        proxy.stop()
        server.kill()


def _redis_cmd(port: int, folder: Path) -> list[str]:
    """A redis-server of the test's own on `port` that keeps nothing on disk."""
    keep_nothing = ["--save", "", "--appendonly", "no", "--dir", str(folder)]
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", *keep_nothing]


def _wait_for_redis(url: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)


def test_api_restart_loses_no_accepted_job(stack: Stack) -> None:
    stack.api()
    stack.start("worker", "worker", "--pool", "solo")
    first, second = stack.learn(steps=6), stack.learn(steps=6)
    stack.until(first["job"]["id"], lambda j: j["status"] in ("running", "succeeded"))
    stack.kill("api")  # SIGKILL while one job runs and the other waits
    stack.api("api2")
    for created in (first, second):
        assert stack.until(created["job"]["id"], done)["status"] == "succeeded"


def test_a_job_accepted_but_never_sent_is_sent_by_the_reconciler(stack: Stack) -> None:
    """The API died between committing a job and sending its message: the job is in the
    database (a retry with its Idempotency-Key would answer 202) but not in the broker."""
    stack.api()
    created = stack.learn(steps=3)  # no worker yet: the message waits in Redis
    job_id = created["job"]["id"]
    redis.Redis.from_url(stack.env["MIFO_BROKER_URL"]).flushdb()  # ... and now it never left
    with session_scope(stack.sessions) as s:
        s.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id))
            .values(enqueued_at=None, updated_at=utcnow() - timedelta(minutes=5))
        )
    stack.kill("api")
    stack.api("api2")
    stack.duties()
    stack.start("worker", "worker", "--pool", "solo")
    job = stack.until(job_id, done)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job


def test_deleting_a_concept_while_syntheses_are_submitted_never_answers_503(
    stack: Stack,
) -> None:
    """Twenty synthesis requests race the concept's deletion (PostgreSQL, real API)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers.factories import make_concept

    stack.api_env["MIFO_MAX_ACTIVE_JOBS"] = "100"  # all twenty may be accepted: none is 429
    stack.api()
    with session_scope(stack.sessions) as s:
        concept_id = make_concept(s, tenant="crash").id
    body = {
        "prompt": "<asset0> and <asset1>",
        "boxes": {"<asset0>": [0.0, 0.0, 0.5, 0.5], "<asset1>": [0.5, 0.5, 1.0, 1.0]},
    }

    def submit(_: int) -> int:
        return stack.http.post(f"/v1/concepts/{concept_id}/syntheses", json=body).status_code

    with ThreadPoolExecutor(21) as pool:
        answers = list(pool.map(submit, range(10)))
        deleted = pool.submit(lambda: stack.http.delete(f"/v1/concepts/{concept_id}"))
        answers += list(pool.map(submit, range(10)))
        assert deleted.result().status_code == 204
    assert set(answers) <= {202, 404}, answers
    with stack.sessions() as s:  # every job accepted before the delete was canceled by it
        left = s.scalars(select(Job.status).where(Job.kind == "synthesize")).all()
    assert len(left) == answers.count(202) and set(left) <= {"canceled"}


def test_database_outage_is_503_and_the_api_recovers(stack: Stack) -> None:
    stack.api()
    job_id = stack.learn(steps=2)["job"]["id"]  # nobody runs it: it stays queued
    stack.proxy.stop()
    r = stack.http.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("database_unavailable") and r.headers["retry-after"]
    assert stack.http.get("/v1/jobs").status_code == 503
    assert stack.http.get("/readyz").status_code == 503
    stack.proxy.start()
    deadline = time.monotonic() + 20
    while (r := stack.http.get(f"/v1/jobs/{job_id}")).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert r.json()["status"] == "queued"


def test_a_stalled_database_server_is_503_within_10_s_and_its_connections_are_dropped(
    stack: Stack,
) -> None:
    """The server stops answering while the kernel still acknowledges (a stuck server process):
    requests in flight answer 503 within 10 s, /healthz keeps answering, and the API recovers
    on fresh connections once the server answers again."""
    from concurrent.futures import ThreadPoolExecutor

    stack.api()
    job_id = stack.learn(steps=2)["job"]["id"]
    assert stack.http.get("/v1/jobs").status_code == 200
    stack.proxy.stall()
    stalled = time.monotonic()

    def timed(path: str) -> tuple[int, float, str]:
        t = time.monotonic()
        r = stack.http.get(path)
        return r.status_code, time.monotonic() - t, r.headers.get("retry-after", "")

    try:
        with ThreadPoolExecutor(10) as pool:
            paths = ["/v1/jobs", f"/v1/jobs/{job_id}", "/readyz"] * 3
            answers = list(pool.map(timed, paths))
            health = [timed("/healthz") for _ in range(5)]
        assert all(code == 503 for code, _, _ in answers), answers
        assert all(
            retry for (_, _, retry), path in zip(answers, paths, strict=True) if path != "/readyz"
        )
        assert max(seconds for _, seconds, _ in answers) < 10, answers
        assert all(code == 200 and seconds < 1 for code, seconds, _ in health), health
        print(f"recovery: stalled database: 503 after at most {max(a[1] for a in answers):.1f} s")
    finally:
        stack.proxy.flow()
    assert time.monotonic() - stalled < 30
    deadline = time.monotonic() + 20
    while (r := stack.http.get(f"/v1/jobs/{job_id}")).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.3)
    assert r.json()["status"] == "queued"


def test_a_frozen_database_is_503_within_10_s_and_healthz_always_answers(
    tmp_path: Path,
) -> None:
    """Packets to the database dropped for 15 s (no reset): requests answer 503 within 10 s,
    /healthz answers throughout, and the API recovers once the link is back."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers.servers import FrozenLink

    link = FrozenLink(5432)
    proxy = TcpProxy(("127.0.0.1", 5432))
    broker = f"redis://127.0.0.1:6379/{random.randint(1, 13)}"
    stack = None
    try:
        with throwaway_postgres() as db:
            upgrade(db)
            stack = Stack(tmp_path, db, broker, proxy)
            host, port = link.address
            stack.api_env["MIFO_DATABASE_URL"] = db.replace("127.0.0.1:5432", f"{host}:{port}")
            stack.api()
            job_id = stack.learn(steps=2)["job"]["id"]
            assert stack.http.get("/v1/jobs").status_code == 200
            link.freeze()
            frozen = time.monotonic()
            health: list[float] = []

            def probe_health() -> None:
                while time.monotonic() - frozen < 15:
                    t = time.monotonic()
                    r = httpx.get(f"{stack.base}/healthz", timeout=5)  # type: ignore[union-attr]
                    assert r.status_code == 200
                    health.append(time.monotonic() - t)
                    time.sleep(0.2)

            def timed(path: str) -> tuple[int, float]:
                t = time.monotonic()
                r = stack.http.get(path)  # type: ignore[union-attr]
                return r.status_code, time.monotonic() - t

            with ThreadPoolExecutor(12) as pool:
                watching = pool.submit(probe_health)
                answers = list(pool.map(timed, ["/v1/jobs", "/v1/concepts", "/readyz"] * 3))
                time.sleep(max(0.0, 15 - (time.monotonic() - frozen)))
                link.thaw()
                watching.result()
            assert all(code == 503 for code, _ in answers), answers
            assert max(seconds for _, seconds in answers) < 10, answers
            assert health and max(health) < 1.0, health
            print(
                f"recovery: frozen database: 503 after at most {max(s for _, s in answers):.1f} s; "
                f"/healthz at most {max(health) * 1000:.0f} ms over {len(health)} probes"
            )
            deadline = time.monotonic() + 20
            while (r := stack.http.get(f"/v1/jobs/{job_id}")).status_code != 200:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.3)
            assert r.json()["status"] == "queued"
            stack.close()
            stack = None
    finally:
        if stack is not None:
            stack.close()
        link.close()
        proxy.stop()
        redis.Redis.from_url(broker).flushdb()


def test_mifo_serve_stops_within_10_s_on_ctrl_c_and_finishes_the_job_after_a_restart(
    tmp_path: Path,
) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group: the server
    and its worker. The running job goes back to the queue and runs after a restart."""
    port = free_port()
    env = {
        **os.environ,
        "MIFO_DATA_DIR": str(tmp_path / "data"),
        "MIFO_BASE_MODEL": "tiny",
        "MIFO_PROGRESS_INTERVAL": "0.2",
    }
    for name in ("MIFO_DATABASE_URL", "MIFO_BROKER_URL", "MIFO_STORAGE_URL", "MIFO_EVENTS_URL"):
        env.pop(name, None)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def serve(n: int) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"serve{n}.log", "ab")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            [*MIFO, "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if http.get("/readyz").status_code == 200:
                    return proc
            time.sleep(0.3)
        raise AssertionError((tmp_path / f"serve{n}.log").read_text()[-3000:])

    first = serve(1)
    try:
        image, masks = make_scene()
        files = [("image", ("s.png", encode(image), "image/png"))]
        files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
        options = {
            "phase1_steps": 150,
            "phase2_steps": 1,
            "reward_steps": 1,
            "diagnostic_timesteps": [100],
        }
        r = http.post("/v1/concepts", files=files, data={"options": json.dumps(options)})
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]["id"]
        deadline = time.monotonic() + 120
        while (job := http.get(f"/v1/jobs/{job_id}").json())["progress"]["step"] in (None, 0):
            assert time.monotonic() < deadline and job["status"] in ("queued", "running"), job
            time.sleep(0.2)
        pressed = time.monotonic()
        os.killpg(first.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert first.wait(timeout=15) == 0  # asked to stop: a clean end
        stopped = time.monotonic() - pressed
        print(f"recovery: mifo serve exited {stopped:.1f} s after Ctrl-C")
        assert stopped < 10
        second = serve(2)
        try:
            job = http.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] in ("queued", "running"), job  # not stranded as running
            deadline = time.monotonic() + 400
            while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.5)
            assert job["status"] == "succeeded" and job["attempts"] == 2, job
        finally:
            os.killpg(second.pid, signal.SIGINT)
            second.wait(timeout=15)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        http.close()
        for log in sorted(tmp_path.glob("serve*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def test_a_real_api_process_holds_its_request_limits(tmp_path: Path) -> None:
    """The request-side rows of the failure table against `mifo api` on PostgreSQL, with a
    Redis of its own for the rate limits: the documented burst of 40 is admitted exactly,
    oversized or malicious inputs are 422 naming the field, a Redis outage admits requests
    with one warning, and an unloadable base model is not ready."""
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    redis_cmd = _redis_cmd(port, tmp_path)
    server = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
    limits_url = f"redis://127.0.0.1:{port}/0"
    _wait_for_redis(limits_url)
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    stack = None
    try:
        with throwaway_postgres() as db:
            upgrade(db)
            stack = Stack(tmp_path, db, f"redis://127.0.0.1:6379/{random.randint(1, 13)}", proxy)
            stack.api_env["MIFO_RATE_LIMIT_URL"] = limits_url
            stack.api()
            with ThreadPoolExecutor(41) as pool:  # a fresh key: its whole burst at once
                codes = list(
                    pool.map(lambda _: stack.http.get("/v1/concepts").status_code, range(40))
                )  # type: ignore[union-attr]
            assert codes == [200] * 40
            refused = stack.http.get("/v1/concepts")
            assert refused.status_code == 429 and refused.headers["retry-after"]
            time.sleep(2.5)  # the window (40 in any 2 s) moves on

            image, masks = make_scene()
            files = [("image", ("s.png", encode(image), "image/png"))]
            files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
            bad_forms = {
                "options": {"options": "[" * 1000 + "]" * 1000},
                "names": {"names": "a" * 500_000},
                "names[0]": {"names": "left\u202e,right"},
            }
            for field, form in bad_forms.items():
                r = stack.http.post("/v1/concepts", files=files, data=form)
                assert r.status_code == 422 and r.json()["field"] == field, (field, r.text[:300])
            body = {"prompt": "a\x00b", "boxes": {}}
            r = stack.http.post(f"/v1/concepts/{uuid.uuid4()}/syntheses", json=body)
            assert r.status_code == 422 and r.json()["field"] == "prompt", r.text
            assert stack.http.get("/v1/concepts").json()["total"] == 0  # nothing was stored

            server.kill()  # Redis down: admitted, one warning for the whole outage
            server.wait()
            assert all(stack.http.get("/v1/concepts").status_code == 200 for _ in range(30))
            log = (tmp_path / "api.log").read_text()
            assert log.count("WARNING core.ratelimit") == 1, log[-2000:]

            stack.api_env["MIFO_BASE_MODEL"] = str(tmp_path / "no-such-model")
            stack.kill("api")
            stack.start("api2", "api", "--port", str(stack.port))
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    ready = stack.http.get("/readyz")
                    if ready.status_code in (200, 503):
                        break
                assert time.monotonic() < deadline
                time.sleep(0.3)
            assert ready.status_code == 503 and ready.json()["checks"]["base_model"].startswith(
                "error"
            )
            assert "no-such-model" in ready.json()["checks"]["base_model"]
            stack.close()
            stack = None
    finally:
        if stack is not None:
            stack.close()
        proxy.stop()
        server.kill()
