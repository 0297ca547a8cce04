"""The overlays run this code as it is: every MIFO_* variable is a setting and each container's
settings parse; every image, command, port, user and mount agrees with deploy/Dockerfile.* and
the `mifo` command line; the probes ask for routes the API serves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.kinds import QUEUES as JOB_QUEUES
from core.settings import Settings
from mifo_cli import build_parser
from mifo_engine.sources import BUILTIN_SPECS
from tests.deploy.manifests import (
    IMAGES,
    OVERLAYS,
    ROOT,
    Container,
    Dockerfile,
    command,
    containers,
    environment,
    of_kind,
    rendered,
)

# Queues whose jobs need the engine extra (torch): served from the worker image only.
ENGINE_QUEUES = set(JOB_QUEUES)


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as m:  # exactly the container's MIFO_* variables
        for name in [k for k in os.environ if k.startswith("MIFO_")]:
            m.delenv(name)
        for name, value in env.items():
            if name.startswith("MIFO_"):
                m.setenv(name, value)
        return Settings()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_mifo_variable_is_a_setting_and_each_container_parses_them(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered(overlay)
    named_anywhere = {k for cm in of_kind(docs, "ConfigMap") for k in cm["data"]}
    for item in containers(docs):
        env = environment(docs, item)
        named_anywhere |= set(env)
        if item.ours:
            settings = _settings(env, monkeypatch)
            assert (settings.database_url or "").startswith("postgresql+psycopg://"), item.where
            assert settings.broker_url.startswith(("redis://", "rediss://")), item.where
            assert (settings.storage_url or "").startswith("s3://"), item.where
    unknown = {
        k
        for k in named_anywhere
        if k.startswith("MIFO_") and k[5:].lower() not in Settings.model_fields
    }
    assert not unknown, f"not settings (ignored, probably misspelt): {unknown}"


def _check_mifo_command(item: Container, words: list[str], dockerfile: Dockerfile) -> Any:
    try:
        args = build_parser().parse_args(words[1:])
    except SystemExit as exc:  # argparse printed why
        raise AssertionError(f"{item.where}: `{' '.join(words)}` is refused") from exc
    if args.command == "worker":
        queues = set((args.queues or ",".join(JOB_QUEUES)).split(","))
        assert queues <= {*JOB_QUEUES, "control"}, (item.where, queues)
        needs = "engine" if queues & ENGINE_QUEUES else "service"
        assert dockerfile.extra == needs, f"{item.where}: {queues} needs the {needs} image"
    elif args.command in ("api", "migrate", "beat"):
        assert dockerfile.extra == "service", f"{item.where}: the API image runs {args.command}"
    if args.command == "api":
        ports = {p["containerPort"] for p in item.spec.get("ports", [])}
        assert args.port in ports and args.port in dockerfile.exposed, (item.where, args.port)
        assert args.host == "0.0.0.0", f"{item.where}: listen beyond the pod's loopback"
    return args


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_job_kinds_queue_has_a_worker(overlay: str) -> None:
    served: set[str] = set()
    for item in containers(rendered(overlay)):
        words = command(item)
        if item.ours and not item.init and words[:2] == ["mifo", "worker"]:
            queues = build_parser().parse_args(words[1:]).queues
            served |= set((queues or ",".join(JOB_QUEUES)).split(","))
    assert set(JOB_QUEUES) <= served, f"{overlay}: no worker takes {set(JOB_QUEUES) - served}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_commands_ports_and_users_match_the_dockerfiles_and_the_cli(overlay: str) -> None:
    docs = rendered(overlay)
    seen = set()
    for item in containers(docs):
        assert item.tag not in (None, "latest") or "@sha256:" in item.spec["image"], item.where
        if not item.ours:
            assert overlay == "dev", f"{item.where}: prod runs no server of its own"
            continue
        dockerfile = Dockerfile.read(IMAGES[item.image])
        assert item.run_as_user() == dockerfile.uid, f"{item.where}: not the image's user"
        words = command(item)
        if words[:2] == ["python", "-c"]:
            assert item.init and item.spec["name"] == "fetch-model", item.where
            continue
        assert words[0] == "mifo", f"{item.where}: runs {words}"
        seen.add(_check_mifo_command(item, words, dockerfile).command)
    assert {"api", "migrate", "worker", "beat"} <= seen, seen


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_that_read_the_base_model_mount_the_model_cache(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered(overlay)
    for item in containers(docs):
        if not item.ours:
            continue
        words = command(item)
        reads_model = words[:2] == ["python", "-c"] or (
            words[:2] in (["mifo", "api"], ["mifo", "worker"]) and "control" not in words
        )
        model = _settings(environment(docs, item), monkeypatch).base_model
        if not reads_model or model in BUILTIN_SPECS:
            continue
        hf_home = Dockerfile.read(IMAGES[item.image]).hf_home
        mounts = {m["mountPath"]: m for m in item.spec.get("volumeMounts", [])}
        assert hf_home in mounts, f"{item.where} reads {model} but mounts nothing at {hf_home}"
        volume = {v["name"]: v for v in item.pod["volumes"]}[mounts[hf_home]["name"]]
        assert "persistentVolumeClaim" in volume, f"{item.where}: the cache must outlive pods"
        writes = item.init  # fetch-model fills it; the others only read
        assert bool(mounts[hf_home].get("readOnly")) is not writes, item.where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_what_a_process_writes_lands_on_a_writable_volume(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-only root file systems: the temporary folder, HOME and MIFO_DATA_DIR (where
    embedded-mode defaults such as the link-signing key go) must be on a writable mount."""
    docs = rendered(overlay)
    for item in containers(docs):
        if not item.ours:
            continue
        assert item.spec["securityContext"]["readOnlyRootFilesystem"] is True, item.where
        writable = [
            Path(m["mountPath"]) for m in item.spec["volumeMounts"] if not m.get("readOnly")
        ]
        env = environment(docs, item)
        for path in ("/tmp", env.get("HOME", "/home/mifo"), _settings(env, monkeypatch).data_dir):
            assert any(Path(path).is_relative_to(w) for w in writable), f"{item.where}: {path}"


def test_the_fetch_model_step_runs(tmp_path: Any) -> None:
    """The init step's script, run as written with the built-in model: nothing to fetch."""
    (fetch,) = [c for c in containers(rendered("prod")) if c.spec["name"] == "fetch-model"]
    words = command(fetch)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIFO_")}
    env |= {"MIFO_BASE_MODEL": "tiny", "MIFO_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env |= {"MIFO_CLIP_MODEL": "tiny", "MIFO_DINO_MODEL": "tiny", "MIFO_SEGMENT_MODEL": "tiny"}
    done = subprocess.run(
        [sys.executable, *words[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "tiny: built in" in done.stdout
    assert "clip_model tiny: built in" in done.stdout and "dino_model tiny: built in" in done.stdout
    assert "segment_model tiny: built in" in done.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_services_name_ports_and_routes_that_exist(overlay: str, tmp_path: Path) -> None:
    from api.main import create_app

    routes = set(create_app(Settings(data_dir=tmp_path, base_model="tiny")).openapi()["paths"])
    docs = rendered(overlay)
    for item in containers(docs):
        ports = {p.get("name") for p in item.spec.get("ports", [])}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            http = item.spec.get(kind, {}).get("httpGet")
            if http and item.ours:
                assert http["path"] in routes, f"{item.where} {kind}: no route {http['path']}"
            if http and isinstance(http["port"], str):
                assert http["port"] in ports, f"{item.where} {kind}: no port {http['port']}"
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        pods = [
            c
            for c in containers(docs)
            if selector.items() <= c.workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        names = {p.get("name") for c in pods for p in c.spec.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service/{service['metadata']['name']}: {port}"
