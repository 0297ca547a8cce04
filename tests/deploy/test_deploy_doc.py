"""docs/deploy.md stays the manifests' own account: the numbers its Scaling table gives are
the ScaledObjects' and the Deployments', the KEDA version is the one the objects name, and
the Secrets it tells an operator to create hold every key the prod overlay reads."""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.manifests import DEPLOY_DOC, documented_secrets, of_kind, rendered
from tests.deploy.test_scaling import _scaled_objects

ROW = re.compile(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|", re.M)
QUEUES = ("learn", "synthesize", "evaluate", "segment")  # the Scaling table's columns


def _number(cell: str) -> int:
    return int(re.match(r"\s*(\d+)", cell)[1])  # type: ignore[index]


def test_the_scaling_table_gives_the_manifests_numbers() -> None:
    rows = {name: tuple(cells) for name, *cells in ROW.findall(DEPLOY_DOC.read_text())}
    scaled = _scaled_objects()
    for field in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        documented = tuple(_number(cell) for cell in rows[field])
        actual = tuple(scaled[queue]["spec"][field] for queue in QUEUES)
        assert documented == actual, f"docs/deploy.md, Scaling, `{field}`: {documented} {actual}"
    graces = tuple(_number(cell) for cell in rows["terminationGracePeriodSeconds"])
    targets = [scaled[queue]["spec"]["scaleTargetRef"]["name"] for queue in QUEUES]
    deployments = {d["metadata"]["name"]: d for d in of_kind(rendered("prod"), "Deployment")}
    actual = tuple(
        deployments[t]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] for t in targets
    )
    assert graces == actual, f"docs/deploy.md, Scaling, grace periods: {graces} {actual}"


def test_the_keda_version_is_the_one_the_objects_were_written_against() -> None:
    text = DEPLOY_DOC.read_text()
    for doc in rendered("prod"):
        version = doc["metadata"].get("annotations", {}).get("mifo/keda-version")
        if version:
            assert f"KEDA {version}" in text, f"docs/deploy.md does not name KEDA {version}"


def _secret_keys(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Secret name -> the keys the overlay reads by name (an envFrom reads them all)."""
    keys: dict[str, set[str]] = {}
    for doc in docs:
        for ref in doc.get("spec", {}).get("secretTargetRef", []):
            keys.setdefault(ref["name"], set()).add(ref["key"])
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    keys.setdefault(source["secretRef"]["name"], set())
    return keys


def test_the_documented_secrets_hold_every_key_prod_reads() -> None:
    docs = rendered("prod")
    assert not of_kind(docs, "Secret"), "prod keeps its Secrets out of the repository"
    documented = documented_secrets()
    for name, keys in _secret_keys(docs).items():
        assert name in documented, f"docs/deploy.md never creates the Secret {name}"
        missing = keys - set(documented[name])
        assert not missing, f"docs/deploy.md: the Secret {name} lacks {missing}"
    keda = documented["mifo-keda"]
    assert re.fullmatch(r"[\w.-]+:\d+", keda["redis-address"]), "KEDA wants host:port"
    assert keda["postgres-connection"].startswith("postgresql://"), "KEDA's driver is not psycopg"
    for key in ("MIFO_DATABASE_URL", "MIFO_BROKER_URL", "MIFO_STORAGE_URL"):
        assert key in documented["mifo-env"], f"docs/deploy.md: mifo-env lacks {key}"
