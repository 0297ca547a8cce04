"""The Kubernetes overlays of deploy/k8s as `kubectl kustomize` renders them, and the facts
the tests compare them with: the Dockerfiles, and the Secrets docs/deploy.md tells an
operator to create (prod keeps its Secrets out of the repository)."""

from __future__ import annotations

import base64
import functools
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
# The images the overlays run, each built from its Dockerfile (docs/deploy.md says how).
IMAGES = {"mifo-api": "deploy/Dockerfile.api", "mifo-worker": "deploy/Dockerfile.worker"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
NO_KUBECTL = "kubectl is not on PATH: it renders the overlays (`kubectl kustomize`)"


@functools.cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def rendered(overlay: str) -> list[dict[str, Any]]:
    """The overlay's objects, rendered (the test is skipped where kubectl is missing)."""
    if shutil.which("kubectl") is None:
        pytest.skip(NO_KUBECTL)
    return list(_render(overlay))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@dataclass(frozen=True)
class Container:
    workload: dict[str, Any]
    pod: dict[str, Any]  # the pod template's spec
    spec: dict[str, Any]
    init: bool

    @property
    def where(self) -> str:
        kind, name = self.workload["kind"], self.workload["metadata"]["name"]
        return f"{kind}/{name}/{self.spec['name']}"

    @property
    def image(self) -> str:
        """The image's name, without its registry, tag or digest."""
        return re.split(r"[@:]", self.spec["image"].rsplit("/", 1)[-1], maxsplit=1)[0]

    @property
    def tag(self) -> str | None:
        """The image's tag (None for a digest or no tag)."""
        last = self.spec["image"].rsplit("/", 1)[-1]
        return None if "@" in last or ":" not in last else last.rsplit(":", 1)[1]

    @property
    def ours(self) -> bool:
        return self.image in IMAGES

    def run_as_user(self) -> int | None:
        own = self.spec.get("securityContext", {}).get("runAsUser")
        return own if own is not None else self.pod.get("securityContext", {}).get("runAsUser")


def containers(docs: list[dict[str, Any]]) -> Iterator[Container]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            pod = doc["spec"]["template"]["spec"]
            for spec in pod.get("initContainers", []):
                yield Container(doc, pod, spec, True)
            for spec in pod["containers"]:
                yield Container(doc, pod, spec, False)


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    cmd: list[str]
    exposed: set[int]
    uid: int
    hf_home: str
    extra: str  # the pyproject extra it installs

    @classmethod
    def read(cls, relative: str) -> Dockerfile:
        path = ROOT / relative
        text = path.read_text()
        (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
        return cls(
            path=path,
            cmd=yaml.safe_load(cmd),
            exposed={int(p) for p in re.findall(r"^EXPOSE (\d+)$", text, re.M)},
            uid=int(re.findall(r"useradd [^\n]*--uid (\d+)", text)[0]),
            hf_home=re.findall(r"\bHF_HOME=(\S+)", text)[0],
            extra=re.findall(r"pip install '\.\[(\w+)\]'", text)[0],
        )


def command(container: Container) -> list[str]:
    """What the container runs: its command and args, or else its image's CMD."""
    spec = container.spec
    if "command" not in spec and container.ours:
        return Dockerfile.read(IMAGES[container.image]).cmd + spec.get("args", [])
    return [*spec.get("command", []), *spec.get("args", [])]


def _bash_commands(text: str) -> Iterator[list[str]]:
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                yield shlex.split(line, comments=True)


@functools.cache
def documented_secrets() -> dict[str, dict[str, str]]:
    """Secret name -> {key: example value}, from docs/deploy.md's `kubectl create secret`."""
    found: dict[str, dict[str, str]] = {}
    for words in _bash_commands(DEPLOY_DOC.read_text()):
        if words[:1] != ["kubectl"] or "secret" not in words or "generic" not in words:
            continue
        name = words[words.index("generic") + 1]
        literals = [w.split("=", 1)[1] for w in words if w.startswith("--from-literal=")]
        found[name] = dict(item.split("=", 1) for item in literals)
    return found


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    """A Secret's data: rendered (dev generates them) or else the documented one (prod)."""
    for doc in of_kind(docs, "Secret"):
        if doc["metadata"]["name"] == name:
            return {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
    assert name in documented_secrets(), f"Secret {name}: neither rendered nor in docs/deploy.md"
    return documented_secrets()[name]


def environment(docs: list[dict[str, Any]], container: Container) -> dict[str, str]:
    """The container's environment variables with plain values (envFrom, then env)."""
    env: dict[str, str] = {}
    for source in container.spec.get("envFrom", []):
        if "configMapRef" in source:
            env |= named(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
        if "secretRef" in source:
            env |= secret_data(docs, source["secretRef"]["name"])
    for item in container.spec.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env
