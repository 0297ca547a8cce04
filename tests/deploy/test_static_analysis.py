"""checkov, a static analyser of Kubernetes manifests and Dockerfiles, finds nothing in the
rendered overlays and deploy/Dockerfile.* that is not suppressed in place with its reason
(a `checkov.io/skipN` annotation, a `# checkov:skip=` comment).

checkov pins older versions of packages the project also uses (boto3, packaging...), so it
does not go into the project's venv: the test installs the pinned version into a venv of its
own, once, under the user's cache folder (about a minute; later runs reuse it)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import IMAGES, OVERLAYS, ROOT, rendered

CHECKOV = "3.3.30"
FRAMEWORKS = ("kubernetes", "dockerfile")
REASON_CHARS = 30  # a suppression says why, not just which check


def _cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mifo-tests" / f"checkov-{CHECKOV}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time
        yield


def checkov() -> Path:
    """The pinned checkov's Python, installed on first use (skipped when the package index
    cannot be reached)."""
    venv = _cache()
    python = venv / "bin" / "python"
    with _locked(venv):
        if (venv / "complete").exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            + ["--no-compile", f"checkov=={CHECKOV}"],
            capture_output=True,
            text=True,
            timeout=480,
        )
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.skip(
                f"checkov=={CHECKOV} could not be installed from the package index: "
                f"{done.stderr.strip()[-400:]}"
            )
        (venv / "complete").touch()
    return python


def _scan(folder: Path) -> list[dict[str, Any]]:
    for overlay in OVERLAYS:
        (folder / f"{overlay}.yaml").write_text(yaml.safe_dump_all(rendered(overlay)))
    for dockerfile in IMAGES.values():
        shutil.copy(ROOT / dockerfile, folder / Path(dockerfile).name)
    done = subprocess.run(
        [str(checkov()), "-m", "checkov.main", "--directory", str(folder)]
        + ["--framework", *FRAMEWORKS, "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.strip(), f"checkov printed nothing:\n{done.stderr[-2000:]}"
    reports = json.loads(done.stdout)
    return reports if isinstance(reports, list) else [reports]


def test_checkov_finds_nothing_that_is_not_suppressed_with_its_reason(tmp_path: Path) -> None:
    reports = {r["check_type"]: r for r in _scan(tmp_path)}
    assert set(reports) == set(FRAMEWORKS), f"checkov read {set(reports)}"
    problems = []
    for kind, report in reports.items():
        assert report["summary"]["resource_count"] > 0, f"checkov found no {kind} resource"
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        for found in report["results"]["failed_checks"]:
            problems.append(
                f"{found['check_id']} {found['check_name']}: {found['resource']} "
                f"({found['file_path']}); fix it, or suppress it in place saying why"
            )
        for skipped in report["results"].get("skipped_checks", []):
            reason = (skipped.get("check_result") or {}).get("suppress_comment") or ""
            if len(reason.strip()) < REASON_CHARS:
                problems.append(f"{skipped['check_id']} on {skipped['resource']}: no reason")
    assert not problems, "\n".join(problems)
