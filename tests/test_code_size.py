"""Units a reader can hold in mind: no route function over 40 lines, no function over 60
(bench/ and migrations/ aside), decorators and docstrings included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "core", "worker", "mifo_engine", "mifo_cli", "mifo_client")
MAX_FUNCTION = 60
MAX_ROUTE = 40


def _functions() -> list[tuple[str, int, bool]]:
    """(where, lines, is a route) for every function of the packages."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                    route = any(
                        isinstance(d, ast.Call)
                        and isinstance(d.func, ast.Attribute)
                        and isinstance(d.func.value, ast.Name)
                        and d.func.value.id == "router"
                        for d in node.decorator_list
                    )
                    where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                    found.append((where, (node.end_lineno or node.lineno) - first + 1, route))
    return found


def test_no_function_is_over_60_lines() -> None:
    long = [f"{where} ({n} lines)" for where, n, _ in _functions() if n > MAX_FUNCTION]
    assert not long, long


def test_no_route_is_over_40_lines() -> None:
    long = [f"{where} ({n} lines)" for where, n, route in _functions() if route and n > MAX_ROUTE]
    assert not long, long


def test_the_check_sees_the_routes() -> None:
    routes = [where for where, _, route in _functions() if route]
    assert any("create_concept" in w for w in routes) and len(routes) > 10
