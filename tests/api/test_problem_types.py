"""One catalogue of problem types: every raise names a type of it, every engine refusal has
one, and a type's status and title come only from it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import mifo_engine.errors as engine_errors
from core.problems import CATALOGUE, TYPES, Problem, from_engine

ROOT = Path(__file__).resolve().parents[2]


def _raised_codes() -> dict[str, str]:
    """code -> where, for every Problem(...) whose code is written out in api/ and core/."""
    found = {}
    for package in ("api", "core"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Problem":
                    first = node.args[0] if node.args else None
                    if isinstance(first, ast.Constant):
                        found[first.value] = f"{path.relative_to(ROOT)}:{node.lineno}"
                    elif isinstance(first, ast.JoinedStr):  # f"{what}_unavailable"
                        found["*_unavailable"] = f"{path.relative_to(ROOT)}:{node.lineno}"
    return found


def test_every_raised_type_is_in_the_catalogue_and_codes_are_unique() -> None:
    assert len(CATALOGUE) == len(TYPES)
    raised = _raised_codes()
    unknown = {c: w for c, w in raised.items() if c != "*_unavailable" and c not in CATALOGUE}
    assert not unknown, unknown
    assert len(raised) > 30  # the scan sees the raises


def test_every_engine_refusal_has_a_type() -> None:
    classes = [
        c
        for c in vars(engine_errors).values()
        if isinstance(c, type) and issubclass(c, engine_errors.MifoError)
    ]
    codes = {c.code for c in classes} - {"canceled"}  # a stopped run, never a response
    assert codes <= set(CATALOGUE), codes - set(CATALOGUE)
    problem = from_engine(engine_errors.EmptyMask("Mask 1 is empty.", field="masks[1]"))
    assert (problem.status, problem.title, problem.field) == (422, "Empty mask", "masks[1]")


def test_a_types_status_and_title_come_from_the_catalogue() -> None:
    problem = Problem("rate_limited", "slow down")
    assert (problem.status, problem.title) == (429, "Too many requests")
    with pytest.raises(KeyError):
        Problem("no_such_type", "x")
    with pytest.raises(ValueError):
        Problem("not_found", "x", status=400)  # a fixed status is not overridden
    assert Problem("http_error", "Teapot", status=418).status == 418


CONCEPT = "00000000-0000-0000-0000-000000000000"


def test_a_body_that_is_not_json_says_where_the_parser_stopped(client: TestClient) -> None:
    r = client.post(
        f"/v1/concepts/{CONCEPT}/syntheses",
        content=b'{"prompt": "x",}',
        headers={"Content-Type": "application/json"},
    )
    problem = r.json()
    assert (r.status_code, problem["type"], problem["field"]) == (
        422,
        "/problems/invalid_json",
        "body",
    )
    assert (
        problem["detail"].startswith("The body is not valid JSON: ")
        and "character" in problem["detail"]
    )
    assert "double-quoted" in problem["fix"]


def test_a_body_without_a_content_type_is_415_naming_the_type_to_send(client: TestClient) -> None:
    r = client.post(f"/v1/concepts/{CONCEPT}/syntheses", content=b'{"prompt": "x"}')
    problem = r.json()
    assert (r.status_code, problem["field"]) == (415, "Content-Type")
    assert "came without a Content-Type header" in problem["detail"]
    assert "application/json" in problem["fix"]


@pytest.mark.parametrize(
    ("path", "fix"),
    [
        (
            f"/v1/concepts/{CONCEPT}/synthesis",
            "did you mean POST or GET /v1/concepts/{concept_id}/syntheses?",
        ),
        ("/v1/job", "did you mean GET /v1/jobs?"),
        ("/nowhere/at/all", "see the routes at /docs"),
    ],
)
def test_an_unknown_route_names_the_route_it_most_likely_meant(
    client: TestClient, path: str, fix: str
) -> None:
    r = client.get(path)
    problem = r.json()
    assert (r.status_code, problem["detail"]) == (404, f"No route GET {path}.")
    assert problem["fix"].startswith(fix), problem


def test_a_bad_download_link_says_where_working_links_come_from(client: TestClient) -> None:
    r = client.get(f"/v1/artifacts/{CONCEPT}", params={"expires": 1, "signature": "x"})
    assert r.status_code == 404
    assert "GET /v1/jobs/{id} or /v1/concepts/{id}" in r.json()["fix"]
