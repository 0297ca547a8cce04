"""docker-compose.yml works with this code: its settings parse, its commands exist, each
service waits for the servers it uses, and the published port and images are right."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from core.kinds import QUEUES as JOB_QUEUES
from core.settings import Settings
from mifo_cli import build_parser
from mifo_engine.models import DEFAULT_BASE_MODEL

ROOT = Path(__file__).resolve().parents[2]
# What each `mifo` command connects to at start-up (a new command must be added here).
USES = {
    "migrate": ("database_url",),
    "beat": ("broker_url",),
    "api": ("database_url", "broker_url", "events_url", "s3_endpoint_url"),
    "worker": ("database_url", "broker_url", "events_url", "s3_endpoint_url"),
}
_VARIABLE = re.compile(r"\$\$|\$\{\w+(?::?-([^}]*))?\}")  # $$, ${NAME}, ${NAME:-default}


def _resolved(value: Any) -> Any:
    """Compose's variable substitution with nothing set in the environment."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: "$" if m[0] == "$$" else (m[1] or ""), value)
    if isinstance(value, dict):
        return {k: _resolved(v) for k, v in value.items()}
    return [_resolved(v) for v in value] if isinstance(value, list) else value


SERVICES: dict[str, dict[str, Any]] = _resolved(
    yaml.safe_load((ROOT / "docker-compose.yml").read_text())
)["services"]
OURS = {name: s for name, s in SERVICES.items() if "build" in s}  # images built from deploy/


def _dockerfile(service: dict[str, Any]) -> Path:
    return ROOT / service["build"].get("context", ".") / service["build"]["dockerfile"]


def _command(service: dict[str, Any]) -> list[str]:
    """The service's command, or else its image's CMD."""
    if "command" in service:
        return service["command"]
    (cmd,) = re.findall(r"^CMD (\[.*\])$", _dockerfile(service).read_text(), re.M)
    return json.loads(cmd)


def _settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    ours = {k: str(v) for k, v in env.items() if k.startswith("MIFO_")}
    unknown = {k for k in ours if k[5:].lower() not in Settings.model_fields}
    assert not unknown, f"not settings (ignored, probably misspelt): {unknown}"
    with monkeypatch.context() as m:  # exactly the container's environment
        for name in [k for k in os.environ if k.startswith("MIFO_")]:
            m.delenv(name)
        for name, value in ours.items():
            m.setenv(name, value)
        return Settings()


def _queues(args: Any) -> set[str]:
    """The queues a `mifo worker` takes (without --queues: every job kind's)."""
    return set((args.queues or ",".join(JOB_QUEUES)).split(","))


def test_every_job_kinds_queue_has_a_worker() -> None:
    served: set[str] = set()
    for service in OURS.values():
        args = build_parser().parse_args(_command(service)[1:])
        if args.command == "worker":
            served |= _queues(args)
    assert set(JOB_QUEUES) <= served, f"no compose worker takes {set(JOB_QUEUES) - served}"


@pytest.mark.parametrize("name", sorted(OURS))
def test_each_service_runs_a_real_command_with_valid_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = OURS[name]
    command = _command(service)
    assert command[0] == "mifo", command
    try:
        args = build_parser().parse_args(command[1:])
    except SystemExit as exc:  # argparse printed why
        raise AssertionError(f"{name}: `{' '.join(command)}` is refused") from exc
    settings = _settings(service, monkeypatch)
    assert settings.base_model == DEFAULT_BASE_MODEL  # the compose default is the code's

    # Each server it uses is healthy (or was, for a one-off service that completed) first.
    def waits_for(svc: dict[str, Any], host: str) -> bool:
        for dep, how in svc.get("depends_on", {}).items():
            condition = how.get("condition", "service_started")
            if dep == host and condition == "service_healthy":
                return True
            if condition == "service_completed_successfully" and waits_for(SERVICES[dep], host):
                return True
        return False

    for field in USES[args.command]:
        url = getattr(settings, field)
        host = urlsplit(url).hostname if url else None
        if host in SERVICES:
            assert "healthcheck" in SERVICES[host], host
            assert waits_for(service, host), f"{name} starts before {host} ({field})"

    if hasattr(args, "port"):  # it listens: on the published port
        published = [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]
        assert str(args.port) in published, (args.port, published)
    if args.command == "worker" and set(JOB_QUEUES) & _queues(args):
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert settings.device.startswith("cuda") and "gpu" in devices[0]["capabilities"]
    if settings.storage_url and settings.storage_url.startswith("s3://"):
        bucket = urlsplit(settings.storage_url).hostname
        made = [
            s
            for s in SERVICES.values()
            if f"mb --ignore-existing local/{bucket}" in str(s.get("command"))
        ]
        assert made, f"no service creates the bucket {bucket}"


@pytest.mark.parametrize("name", sorted(OURS))
def test_images_build_from_deploy_with_files_that_exist(name: str) -> None:
    dockerfile = _dockerfile(OURS[name])
    assert dockerfile.parent == ROOT / "deploy" and dockerfile.is_file(), dockerfile
    for line in re.findall(r"^COPY (.+)$", dockerfile.read_text(), re.M):
        for source in [word for word in line.split()[:-1] if not word.startswith("--")]:
            assert (ROOT / OURS[name]["build"].get("context", ".") / source).exists(), line
