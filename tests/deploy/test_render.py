"""Both overlays render, and every object they hold is valid: the Kubernetes objects against
the Kubernetes API schemas (the `kubernetes-validate` package ships them), the KEDA objects
against tests/deploy/keda-<version>.schema.json, written from KEDA's reference for the
version each object names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import OVERLAYS, of_kind, rendered

HERE = Path(__file__).resolve().parent
# KEDA 2.17 supports Kubernetes 1.30 to 1.32: the oldest, and the newest the package knows.
OLDEST_KUBERNETES = "1.30"
KEDA_GROUP = "keda.sh/"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_into_its_namespace(overlay: str) -> None:
    docs = rendered(overlay)
    (namespace,) = of_kind(docs, "Namespace")
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace["metadata"]["name"], doc


def _kubernetes_versions() -> list[str]:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (the dev extra) is not installed"
    )
    return [OLDEST_KUBERNETES, kv.latest_version()]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    versions = _kubernetes_versions()
    import kubernetes_validate

    docs = [d for d in rendered(overlay) if not d["apiVersion"].startswith(KEDA_GROUP)]
    errors = []
    for version in versions:
        for doc in docs:
            where = f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version})"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                errors.append(f"{where}: {exc.message}")
    assert not errors, "\n".join(errors)


def keda_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """The schema for the KEDA version the object was written against (its annotation)."""
    version = doc["metadata"].get("annotations", {}).get("mifo/keda-version")
    assert version, f"{doc['kind']}/{doc['metadata']['name']}: no mifo/keda-version annotation"
    path = HERE / f"keda-{version}.schema.json"
    assert path.is_file(), f"no {path.name}: write it from KEDA {version}'s reference"
    return json.loads(path.read_text())


def test_every_keda_object_matches_the_reference_of_its_version() -> None:
    from jsonschema import Draft202012Validator

    keda = [d for d in rendered("prod") if d["apiVersion"].startswith(KEDA_GROUP)]
    assert {d["kind"] for d in keda} == {"ScaledObject", "TriggerAuthentication"}
    errors = []
    for doc in keda:
        schema = keda_schema(doc)
        check = Draft202012Validator({**schema, "$ref": f"#/$defs/{doc['kind']}"})
        for error in check.iter_errors(doc):
            path = ".".join(map(str, error.absolute_path))
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {error.message}")
    assert not errors, "\n".join(errors)


def test_each_trigger_authentication_supplies_what_its_scaler_reads() -> None:
    docs = rendered("prod")
    auths = {d["metadata"]["name"]: d for d in of_kind(docs, "TriggerAuthentication")}
    used = set()
    for scaled in of_kind(docs, "ScaledObject"):
        allowed = keda_schema(scaled)["authParameters"]
        for trigger in scaled["spec"]["triggers"]:
            name = trigger["authenticationRef"]["name"]
            assert name in auths, f"{scaled['metadata']['name']}: no TriggerAuthentication {name}"
            used.add(name)
            given = {ref["parameter"] for ref in auths[name]["spec"]["secretTargetRef"]}
            unknown = given - set(allowed[trigger["type"]])
            assert not unknown, f"the {trigger['type']} scaler reads no {unknown} ({name})"
    assert used == set(auths), f"unused: {set(auths) - used}"
