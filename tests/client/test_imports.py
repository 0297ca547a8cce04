"""mifo_client needs httpx, pydantic and the standard library only: no torch, none of the
service's packages."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE = {"mifo_engine", "api", "core", "worker", "mifo_cli"}
HEAVY = {"torch", "diffusers", "transformers", "numpy", "PIL", "sqlalchemy", "fastapi", "celery"}
ALLOWED = {"httpx", "pydantic", "mifo_client", "__future__"}


def test_importing_the_client_loads_no_service_or_engine_module(tmp_path: Path) -> None:
    code = "import json, sys, mifo_client; print(json.dumps(sorted(sys.modules)))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIFO_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = {name.split(".")[0] for name in json.loads(done.stdout)}
    assert "mifo_client" in loaded
    assert not loaded & (SERVICE | HEAVY), sorted(loaded & (SERVICE | HEAVY))
    assert list(tmp_path.iterdir()) == []  # importing creates nothing


def test_every_import_of_the_package_is_httpx_pydantic_or_the_standard_library() -> None:
    bad = []
    for path in sorted((ROOT / "mifo_client").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in ALLOWED and top not in sys.stdlib_module_names:
                    bad.append(f"{path.relative_to(ROOT)}: {name}")
    assert not bad, bad
