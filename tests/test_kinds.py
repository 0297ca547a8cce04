"""Every kind of job (core.kinds) has everything a kind needs across the layers: the route
that creates it, a Celery task on its own queue, a runner, a result presenter, a method of
the Python client (sync and async), a `mifo remote` command, and a row in docs/service.md.
A kind added to the registry alone fails here, naming what it lacks (docs/contributing.md,
"Adding a job kind"); the deploy manifests are checked in tests/deploy."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from api.main import create_app
from api.present import RESULTS
from core import kinds
from core.queue import QUEUES, create_celery
from core.settings import Settings
from mifo_cli import build_parser
from mifo_client import AsyncClient, Client

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = Settings(broker_url="memory://", base_model="tiny")
KINDS = pytest.mark.parametrize("kind", kinds.ALL, ids=lambda k: k.name)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@KINDS
def test_each_kind_has_its_route(kind: kinds.Kind) -> None:
    method, path = kind.route.split(" ", 1)
    operation = create_app(SETTINGS).openapi()["paths"].get(path, {}).get(method.lower())
    assert operation is not None, f"{kind.name}: the API has no route {kind.route}"
    assert "202" in operation["responses"], f"{kind.route}: no 202 with the job"


@KINDS
def test_each_kind_has_a_task_on_its_queue_and_a_runner(kind: kinds.Kind) -> None:
    from worker.runner import RUNNERS
    from worker.tasks import JOB_TASKS, celery_app

    assert kind.name in RUNNERS, f"worker.runner.RUNNERS has no runner for {kind.name}"
    assert JOB_TASKS[kind.name].name == kind.task
    assert kind.task in celery_app.tasks, f"no Celery task {kind.task}"
    assert kind.queue in QUEUES
    assert create_celery(SETTINGS).conf.task_routes[kind.task] == {"queue": kind.queue}


@KINDS
def test_each_kind_has_a_result_presenter(kind: kinds.Kind) -> None:
    assert kind.name in RESULTS, f"api.present.RESULTS has no presenter for {kind.name}"


def test_no_table_keeps_a_kind_the_registry_does_not_list() -> None:
    from worker.runner import RUNNERS
    from worker.tasks import JOB_TASKS

    for table in (RESULTS, RUNNERS, JOB_TASKS):
        assert tuple(table) == kinds.NAMES, table


@KINDS
def test_each_kind_has_a_client_method_and_a_remote_command(kind: kinds.Kind) -> None:
    for client in (Client, AsyncClient):
        method = getattr(client, kind.name, None)
        assert callable(method), f"mifo_client.{client.__name__} has no method {kind.name}"
    assert inspect.iscoroutinefunction(AsyncClient.__dict__[kind.name])
    remote = _commands(_commands(build_parser())["remote"])
    assert kind.name in remote, f"`mifo remote` has no command {kind.name}"


def _kind_rows() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "service.md").read_text()
    section = text.split("\n## Job kinds\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if match := re.match(r"^\| `([^`]+)` \| (.*) \|$", line):
            rows[match[1]] = [cell.strip() for cell in match[2].split(" | ")]
    return rows


def test_each_kind_has_its_row_in_service_md_and_no_other_kind_has_one() -> None:
    rows = _kind_rows()
    assert list(rows) == list(kinds.NAMES), "docs/service.md, Job kinds: one row per kind"
    for kind in kinds.ALL:
        expected: list[Any] = [f"`{kind.route}`", f"`{kind.queue}`"]
        expected.append(f"`{kind.time_limit_variable}`")
        assert rows[kind.name][:3] == expected, (kind.name, rows[kind.name])
        assert rows[kind.name][3], f"{kind.name}: say what its result holds"
