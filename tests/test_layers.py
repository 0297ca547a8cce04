"""The layers: which package may import which, and importing creates nothing on disk.

mifo_engine (the method) <- core (shared service state; the engine only through
core/engine.py) <- api (HTTP), worker (Celery); mifo_cli, the composition root, is the only
place that wires them all together.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the top-level packages none of its modules may import (lazy imports included)
FORBIDDEN = {
    "api": {"worker", "mifo_engine"},
    "worker": {"api", "mifo_engine"},
    "core": {"api", "worker", "mifo_engine"},
    "mifo_engine": {"api", "core", "worker"},
}
# The service reaches the engine through this one module only (its docstring lists the names).
ENGINE_ADAPTER = ROOT / "core" / "engine.py"


def _modules(package: str) -> list[str]:
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":  # running it is the point of it
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_it(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}"
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ENGINE_ADAPTER and (bad := _imported_packages(path) & FORBIDDEN[package])
    ]
    assert not offenders, offenders


def test_importing_every_module_creates_nothing(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    modules = ["mifo_engine"] + [
        m for p in ("core", "api", "worker", "mifo_cli") for m in _modules(p)
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIFO_")}
    env |= {"MIFO_DATA_DIR": str(cwd / "data"), "PYTHONPATH": str(ROOT)}
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)"
    done = subprocess.run(
        [sys.executable, "-c", code, *modules], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    created = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
    assert created == [], f"importing {len(modules)} modules created {created}"


# Each folder of tests/ is a part of the source (engine: mifo_engine, cli: mifo_cli), a
# surface of the product (browser: the console, deploy, bench) or shared test code.
TEST_FOLDERS = {
    "api": "api",
    "core": "core",
    "worker": "worker",
    "engine": "mifo_engine",
    "cli": "mifo_cli",
    "client": "mifo_client",
    "browser": "api/console",
    "deploy": "deploy",
    "bench": "bench",
}
SHARED = {"helpers", "fixtures"}


def test_the_test_tree_mirrors_the_source() -> None:
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(TEST_FOLDERS) | SHARED, folders ^ (set(TEST_FOLDERS) | SHARED)
    for source in TEST_FOLDERS.values():
        assert (ROOT / source).is_dir(), source
    # Named by subject, not by who met the behaviour first.
    audience = [p.name for p in (ROOT / "tests").rglob("test_*.py") if "newcomer" in p.name]
    assert not audience, audience
