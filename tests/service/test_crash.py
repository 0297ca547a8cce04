"""Crash safety with real processes: `mifo api` and `mifo worker` on PostgreSQL and Redis,
the tiny model, local object storage. A worker killed with SIGKILL mid-job, an API restarted
with jobs queued and running, a database that goes away and comes back."""

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
from tests.helpers.images import encode, make_scene

from .conftest import throwaway_postgres
from .servers import TcpProxy, free_port

pytestmark = pytest.mark.slow

MIFO = [sys.executable, "-m", "mifo_cli"]
ROOT = Path(__file__).resolve().parents[2]
VISIBILITY = 10  # seconds before Redis hands an unacknowledged job to another worker


class Stack:
    def __init__(self, tmp: Path, db: str, broker: str, proxy: TcpProxy) -> None:
        self.tmp, self.proxy, self.port = tmp, proxy, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        proxied = db.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        self.env = {
            **os.environ, "MIFO_DATABASE_URL": db, "MIFO_BROKER_URL": broker,
            "MIFO_STORAGE_URL": (tmp / "objects").as_uri(), "MIFO_BASE_MODEL": "tiny",
            "MIFO_DEVICE": "cpu", "MIFO_PROGRESS_INTERVAL": "0.2", "MIFO_DATA_DIR": str(tmp),
            "MIFO_VISIBILITY_TIMEOUT": str(VISIBILITY), "MIFO_URL_SIGNING_KEY": "test-signing",
        }  # fmt: skip
        self.api_env = {**self.env, "MIFO_DATABASE_URL": proxied}
        self.storage = LocalStorage(tmp / "objects")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        engine = make_engine(db)
        self.sessions = make_sessionmaker(engine)
        with session_scope(self.sessions) as s:
            _, key = auth.create_key(s, tenant=auth.get_or_create_tenant(s, "crash")[0])
        self.http = httpx.Client(base_url=self.base, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"})  # fmt: skip

    def start(self, name: str, *args: str) -> None:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        env = self.api_env if args[0] == "api" else self.env
        self.procs[name] = subprocess.Popen([*MIFO, *args], env=env, cwd=ROOT, stdout=log,
                                            stderr=log)  # fmt: skip

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
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(30)

    def learn(self, steps: int) -> dict[str, Any]:
        image, masks = make_scene()
        files = [("image", ("s.png", encode(image), "image/png"))]
        files += [("masks", (f"m{i}.png", encode(m), "image/png")) for i, m in enumerate(masks)]
        options = {"phase1_steps": steps, "phase2_steps": 1, "reward_steps": 1,
                   "diagnostic_timesteps": [100]}  # fmt: skip
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


def test_worker_killed_mid_job_is_redelivered_once_and_leaves_one_concept(stack: Stack) -> None:
    stack.api()
    stack.start("worker1", "worker", "--pool", "solo")
    created = stack.learn(steps=12)
    job_id, concept_id = created["job"]["id"], created["concept"]["id"]
    stack.until(job_id, lambda j: j["status"] == "running" and (j["progress"]["step"] or 0) >= 1)
    stack.kill("worker1")  # SIGKILL: no chance to clean up or to acknowledge
    assert stack.job(job_id)["status"] == "running"
    stack.start("worker2", "worker", "--pool", "solo")
    job = stack.until(job_id, done, timeout=VISIBILITY + 150)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    with stack.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Concept)) == 1
        keys = {a.key for a in s.scalars(select(Artifact))}
    stored = set(stack.storage.keys("concepts/"))
    assert all(k.startswith(f"concepts/{concept_id}/") for k in stored)
    assert keys <= stored  # every artifact is there ...
    learned = {k for k in stored if "/concept/" in k}
    folder = f"concepts/{concept_id}/concept/attempt-2/"  # ... and one concept's files only
    assert f"{folder}concept.json" in learned and all(k.startswith(folder) for k in learned)
    assert not any(".part-" in k for k in stored)


def test_api_restart_loses_no_accepted_job(stack: Stack) -> None:
    stack.api()
    stack.start("worker", "worker", "--pool", "solo")
    first, second = stack.learn(steps=6), stack.learn(steps=6)
    stack.until(first["job"]["id"], lambda j: j["status"] in ("running", "succeeded"))
    stack.kill("api")  # SIGKILL while one job runs and the other waits
    stack.api("api2")
    for created in (first, second):
        assert stack.until(created["job"]["id"], done)["status"] == "succeeded"


def test_a_job_accepted_but_never_sent_runs_after_the_api_restarts(stack: Stack) -> None:
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
    stack.api("api2")  # sends what was never sent, at start-up
    stack.start("worker", "worker", "--pool", "solo")
    job = stack.until(job_id, done)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job


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
