"""What the overlays promise about running and scaling: one GPU Deployment per job queue, each
scaled by a KEDA ScaledObject that reads the Redis list Celery really fills and counts the
jobs PostgreSQL really holds; exactly one beat; migrations before the API serves; prod pinned,
dev self-contained on `tiny`."""

from __future__ import annotations

import re
import tomllib
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text

from core.engine import DEFAULT_BASE_MODEL
from core.kinds import QUEUES as JOB_QUEUES
from core.queue import Broker
from core.settings import Settings
from mifo_cli import build_parser
from tests.deploy import jobsdb
from tests.deploy.manifests import (
    ROOT,
    command,
    containers,
    environment,
    named,
    of_kind,
    rendered,
    secret_data,
)

# The cluster autoscaler waits this long for a pod it evicts, by default
# (--max-graceful-termination-sec); a longer grace period would be cut there.
AUTOSCALER_GRACE = 600
ACTIVATION = {"redis": "activationListLength", "postgresql": "activationTargetQueryValue"}


def _workers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Queue -> the Deployment whose `mifo worker` serves only that job queue."""
    found = {}
    for item in containers(docs):
        words = command(item)
        if words[:2] == ["mifo", "worker"] and not item.init:
            queues = build_parser().parse_args(words[1:]).queues.split(",")
            if len(queues) == 1 and queues[0] in JOB_QUEUES:
                found[queues[0]] = item.workload
    return found


def test_each_job_queue_has_a_gpu_deployment_that_never_drops_its_job() -> None:
    workers = _workers(rendered("prod"))
    assert set(workers) == set(JOB_QUEUES), "each kind's queue needs a GPU Deployment of its own"
    for queue, deployment in workers.items():
        pod = deployment["spec"]["template"]
        spec = pod["spec"]
        (container,) = spec["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1", queue
        assert spec["nodeSelector"], queue
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), queue
        annotations = pod["metadata"]["annotations"]
        assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false", queue
        assert 60 < spec["terminationGracePeriodSeconds"] <= AUTOSCALER_GRACE, queue
        assert "replicas" not in deployment["spec"], f"{queue}: KEDA owns the replica count"
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, queue


def _scaled_objects() -> dict[str, dict[str, Any]]:
    """Queue -> its ScaledObject."""
    docs = rendered("prod")
    workers = {d["metadata"]["name"]: q for q, d in _workers(docs).items()}
    found = {}
    for scaled in of_kind(docs, "ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]["name"]
        assert target in workers, f"{scaled['metadata']['name']} scales no GPU worker"
        found[workers[target]] = scaled
    assert set(found) == set(workers.values()), "a GPU queue without a ScaledObject"
    return found


# Queues kept warm: a segmentation is a click someone waits on (docs/deploy.md, "Scaling").
WARM = {"segment": 1}


def test_each_scaled_object_follows_its_queue_down_to_zero() -> None:
    """Down to zero, but for the queues people click and wait on, which keep a warm pod."""
    for queue, scaled in _scaled_objects().items():
        spec = scaled["spec"]
        assert spec["minReplicaCount"] == WARM.get(queue, 0), queue
        assert spec["maxReplicaCount"] > spec["minReplicaCount"], queue
        assert spec["cooldownPeriod"] > 0 and spec["pollingInterval"] > 0, queue
        triggers = {t["type"]: t for t in spec["triggers"]}
        assert set(triggers) == {"redis", "postgresql"}, queue
        for kind, trigger in triggers.items():
            assert ACTIVATION[kind] in trigger["metadata"], f"{queue} {kind}: no activation"
        assert triggers["redis"]["metadata"]["listName"] == queue
        query = triggers["postgresql"]["metadata"]["query"]
        assert f"kind = '{queue}'" in query and "'running'" in query, query
    learn = _scaled_objects()["learn"]["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    assert learn["behavior"]["scaleDown"]["selectPolicy"] == "Disabled"


def test_the_redis_trigger_reads_the_list_celery_fills() -> None:
    import redis

    url = "redis://127.0.0.1:6379/15"  # a database of this test's own, emptied before and after
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis on {url}: {exc}")
    broker = Broker.from_settings(Settings(broker_url=url))
    try:
        for queue, scaled in _scaled_objects().items():
            (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "redis"]
            listed = trigger["metadata"]["listName"]
            broker.send(uuid.uuid4(), queue)
            assert client.llen(listed) == 1, f"{queue}: the message is not in list {listed!r}"
            others = [k for k in client.scan_iter(f"{queue}*") if client.type(k) == b"list"]
            assert others == [listed.encode()], f"{queue}: messages also in {others}"
    finally:
        client.flushdb()
        client.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_postgresql_trigger_counts_the_queued_and_running_jobs(
    database: str, tmp_path: Path
) -> None:
    def run(url: str) -> None:
        counts = jobsdb.seed(url)
        engine = create_engine(url)
        with engine.connect() as conn:
            for queue, scaled in _scaled_objects().items():
                (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "postgresql"]
                got = conn.execute(text(trigger["metadata"]["query"])).scalar_one()
                assert got == counts[(queue, "queued")] + counts[(queue, "running")], queue
        engine.dispose()

    if database == "sqlite":
        run(jobsdb.sqlite_url(tmp_path))
    else:
        with jobsdb.postgres_url() as url:
            run(url)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_exactly_one_beat_that_an_update_never_doubles(overlay: str) -> None:
    docs = rendered(overlay)
    beats = [c.workload for c in containers(docs) if command(c)[:2] == ["mifo", "beat"]]
    (beat,) = beats
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in of_kind(docs, "ScaledObject")}
    scaled |= {
        d["spec"]["scaleTargetRef"]["name"] for d in of_kind(docs, "HorizontalPodAutoscaler")
    }
    assert beat["metadata"]["name"] not in scaled


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_api_migrates_the_database_before_it_serves(overlay: str) -> None:
    docs = rendered(overlay)
    for item in containers(docs):
        words = command(item)
        if words[:2] == ["mifo", "migrate"]:
            assert item.init, f"{item.where}: migrations run as an init step of the API"
        if words[:2] == ["mifo", "api"]:
            inits = [command(c) for c in containers([item.workload]) if c.init]
            assert inits and inits[0][:2] == ["mifo", "migrate"], item.where


def test_prod_pins_its_images_and_base_model() -> None:
    docs = rendered("prod")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for item in containers(docs):
        assert item.tag == version or "@sha256:" in item.spec["image"], item.where
        env = environment(docs, item)
        assert env["MIFO_BASE_MODEL"] == DEFAULT_BASE_MODEL, item.where
        assert env["MIFO_WORKER_POOLS"] == "per-kind", item.where
    assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", DEFAULT_BASE_MODEL)


def test_dev_runs_every_server_and_one_cpu_worker_on_tiny() -> None:
    docs = rendered("dev")
    assert not of_kind(docs, "ScaledObject") and "nvidia.com/gpu" not in str(docs)
    services = {s["metadata"]["name"] for s in of_kind(docs, "Service")}
    workers = [c for c in containers(docs) if command(c)[:2] == ["mifo", "worker"]]
    (worker,) = [c for c in workers if "control" not in command(c)]
    assert command(worker)[2:] == ["--queues", ",".join(JOB_QUEUES)]
    env = environment(docs, worker)
    assert env["MIFO_BASE_MODEL"] == "tiny" and env["MIFO_DEVICE"] == "cpu"
    assert env["MIFO_WORKER_POOLS"] == "shared"
    for name in ("MIFO_DATABASE_URL", "MIFO_BROKER_URL", "MIFO_S3_ENDPOINT_URL"):
        assert urlsplit(env[name]).hostname in services, f"{name}: no such Service"
    bucket = urlsplit(env["MIFO_STORAGE_URL"]).hostname
    job = named(docs, "Job", "minio-bucket")
    assert f"mc mb --ignore-existing local/{bucket}" in str(job["spec"]), "no Job makes the bucket"
    servers = secret_data(docs, "mifo-dev-servers")
    assert f"mifo:{servers['POSTGRES_PASSWORD']}@" in env["MIFO_DATABASE_URL"]
    assert env["AWS_SECRET_ACCESS_KEY"] == servers["MINIO_ROOT_PASSWORD"]
