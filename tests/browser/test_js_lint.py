"""The console's JavaScript keeps to its rules, as `make lint` checks them: ESLint
(eslint.config.js: the recommended rules, no function over 60 lines, no class over 150) and
Prettier's layout (width 100), at the versions package.json and package-lock.json pin.

The tools come from the project's own files: `npm ci` installs them into node_modules/ when
they are missing or older than the lock (as the Makefile's node_modules/.installed does).
Without npm the tests skip, saying why; under CI (CI=true) they fail. No browser is needed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from api.console import STATIC
from tests.browser.conftest import _missing
from tests.helpers.serve import ROOT

BIN = ROOT / "node_modules" / ".bin"
STAMP = ROOT / "node_modules" / ".installed"
# What `make lint` checks (the Makefile's lint target names the same two).
CHECKED = ["eslint.config.js", str(STATIC.relative_to(ROOT) / "js")]


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def tools() -> None:
    npm = shutil.which("npm")
    if not npm:
        _missing("npm is not installed (apt-get install -y nodejs npm)")
    inputs = [ROOT / "package.json", ROOT / "package-lock.json"]
    if not STAMP.exists() or any(p.stat().st_mtime > STAMP.stat().st_mtime for p in inputs):
        done = _run(npm, "ci", "--no-audit", "--no-fund")
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
        STAMP.touch()


def _eslint(*args: str, stdin: str | None = None) -> list[dict]:
    """ESLint's JSON report: one entry per file, with its messages."""
    done = _run(str(BIN / "eslint"), "--format", "json", *args, stdin=stdin)
    assert done.returncode in (0, 1), done.stderr  # 1: problems found, 2: ESLint failed
    return json.loads(done.stdout)


def test_eslint_passes_on_every_console_module(tools: None) -> None:
    report = _eslint(*CHECKED)
    linted = {Path(r["filePath"]).relative_to(ROOT).as_posix() for r in report}
    modules = {p.relative_to(ROOT).as_posix() for p in STATIC.rglob("*.js")}
    assert linted == modules | {"eslint.config.js"}, linted ^ (modules | {"eslint.config.js"})
    problems = [
        f"{Path(r['filePath']).relative_to(ROOT)}:{m['line']}: {m['message']} ({m.get('ruleId')})"
        for r in report
        for m in r["messages"]
    ]
    assert not problems, "\n".join(problems)


def test_prettier_layout(tools: None) -> None:
    done = _run(str(BIN / "prettier"), "--check", *CHECKED)
    fix = f"node_modules/.bin/prettier --write {' '.join(CHECKED)}"
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\nfix with: {fix}"


def _unit(kind: str, lines: int) -> str:
    """A function (its body comments: they count too) or a class of exactly `lines` lines."""
    if kind == "function":
        return "\n".join(["export function f() {", *["  // a line"] * (lines - 2), "}\n"])
    return "\n".join(["export class C {", *[f"  m{i}() {{}}" for i in range(lines - 2)], "}\n"])


@pytest.mark.parametrize(
    ("kind", "limit", "rule"),
    [
        ("function", 60, "max-lines-per-function"),
        ("class", 150, "size/max-class-lines"),
    ],
)
def test_the_size_rules_hold_at_their_limits(tools: None, kind: str, limit: int, rule: str) -> None:
    """The limits bite one line past them, on a file where the console's modules live."""
    where = str(STATIC.relative_to(ROOT) / "js" / "probe.js")
    for lines, fails in ((limit, False), (limit + 1, True)):
        source = _unit(kind, lines)
        assert source.count("\n") == lines
        (report,) = _eslint("--stdin", "--stdin-filename", where, stdin=source)
        rules = {m.get("ruleId") for m in report["messages"]}
        assert (rule in rules) == fails, (lines, report["messages"])
        assert rules <= {rule}, report["messages"]
