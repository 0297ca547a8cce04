"""docker-compose.yml: the services, ports, settings and start order the stack needs."""

from __future__ import annotations

from pathlib import Path

import yaml

from core.settings import Settings
from mifo_engine.models import DEFAULT_BASE_MODEL

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _needs(service: dict, other: str, condition: str) -> bool:
    return service.get("depends_on", {}).get(other, {}).get("condition") == condition


def test_services_and_ports() -> None:
    services = _compose()["services"]
    assert {"api", "worker", "postgres", "redis", "minio", "minio-init", "migrate"} <= set(services)
    assert "8000:8000" in services["api"]["ports"]
    assert "9000:9000" in services["minio"]["ports"]
    for name in ("postgres", "redis", "minio"):
        assert "healthcheck" in services[name], name


def test_start_order() -> None:
    s = _compose()["services"]
    assert _needs(s["migrate"], "postgres", "service_healthy")
    assert _needs(s["minio-init"], "minio", "service_healthy")
    assert s["migrate"]["command"] == ["mifo", "migrate"]
    assert "mc mb" in " ".join(s["minio-init"]["command"])
    for app in ("api", "worker"):
        assert _needs(s[app], "migrate", "service_completed_successfully"), app
        assert _needs(s[app], "minio-init", "service_completed_successfully"), app
        assert _needs(s[app], "redis", "service_healthy"), app


def test_worker_reserves_a_gpu_and_images_exist() -> None:
    s = _compose()["services"]
    devices = s["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1
    for app, dockerfile in (("api", "Dockerfile.api"), ("worker", "Dockerfile.worker")):
        assert s[app]["build"]["dockerfile"] == f"deploy/{dockerfile}"
        assert (ROOT / "deploy" / dockerfile).is_file()
    assert "nvidia/cuda" in (ROOT / "deploy" / "Dockerfile.worker").read_text()


def test_environment_is_valid_settings_pointing_at_the_services() -> None:
    s = _compose()["services"]
    env = s["api"]["environment"]
    assert env == s["worker"]["environment"] == s["migrate"]["environment"]
    assert "@postgres:5432/" in env["MIFO_DATABASE_URL"]
    assert env["MIFO_BROKER_URL"].startswith("redis://redis:6379")
    assert env["MIFO_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert f":-{DEFAULT_BASE_MODEL}}}" in env["MIFO_BASE_MODEL"]
    values = {k[5:].lower(): v for k, v in env.items() if k.startswith("MIFO_")}
    settings = Settings(**values)  # every MIFO_ name is a real setting
    assert settings.storage_url == "s3://mifo/"
    assert set(values) <= set(Settings.model_fields)
