"""The Grafana dashboard and the PromQL of docs/deploy.md ask only for metrics, labels and
label values the service exports: those the API's GET /metrics answers over a database that
holds jobs of every kind and status."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from core.jobs import STATUSES
from core.kinds import NAMES as KINDS
from core.queue import QUEUES
from tests.deploy import jobsdb
from tests.deploy.manifests import DEPLOY_DOC, ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "mifo-dashboard.json"
# Labels Prometheus adds to every scraped series, and the histogram's bucket label.
SCRAPE_LABELS = {"instance", "pod", "job", "namespace", "le"}
VALUES = {"kind": set(KINDS), "status": {str(s) for s in STATUSES}, "queue": set(QUEUES)}
MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample name -> its label names, as GET /metrics answers them."""
    settings = jobsdb.app_settings(tmp_path_factory.mktemp("metrics"))
    with TestClient(create_app(settings)) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def _problems(query: str, exported: dict[str, set[str]]) -> list[str]:
    names = set(re.findall(r"\bmifo_\w+", query))
    problems = [f"{n}: not exported" for n in sorted(names - set(exported))]
    labels = set().union(*(exported.get(n, set()) for n in names)) | SCRAPE_LABELS
    for label, value in MATCHER.findall(query):
        if label not in labels:
            problems.append(f"label {label}: not on {sorted(names)}")
        elif label in VALUES and not set(value.split("|")) <= VALUES[label]:
            problems.append(f"{label}={value!r}: the service writes {sorted(VALUES[label])}")
    for group in GROUPING.findall(query):
        unknown = {g.strip() for g in group.split(",") if g.strip()} - labels
        problems += [f"grouped by {u}: no such label" for u in sorted(unknown)]
    return [f"{query}: {p}" for p in problems]


def test_the_dashboard_queries_only_what_the_service_exports(
    exported: dict[str, set[str]],
) -> None:
    assert "mifo_job_duration_seconds_bucket" in exported  # the seeded jobs reached it
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 5
    problems = [p for q in queries for p in _problems(q, exported)]
    assert not problems, "\n".join(problems)


def test_the_promql_of_deploy_md_queries_only_what_the_service_exports(
    exported: dict[str, set[str]],
) -> None:
    spans = re.findall(r"`([^`\n]*mifo_\w+[^`\n]*)`", DEPLOY_DOC.read_text())
    queries = [s.replace("\\|", "|") for s in spans]
    assert len(queries) >= 4
    problems = [p for q in queries for p in _problems(q, exported)]
    assert not problems, "\n".join(problems)


def test_the_lease_loss_line_the_docs_point_at_is_the_one_the_reconciler_logs() -> None:
    line = "lost its worker (lease lapsed); queued again"
    assert line in (ROOT / "core" / "reconcile.py").read_text()
    assert line in DEPLOY_DOC.read_text()
