"""The API-only install (`pip install '.[service]'`, no torch) serves the API and the control
duties: the API's path never imports the engine's heavy dependencies.

The check runs in a fresh interpreter. To try an API-only environment by hand (it needs no
pytest): `/path/to/venv/bin/python tests/test_packaging.py`, from any folder.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "peft", "accelerate")  # the engine extra's imports


def probe(data_dir: str) -> list[str]:
    """Build the app on tiny settings, upload a concept, ask for a synthesis and a segmentation
    (valid and not), run the control duties; returns the heavy modules that were imported
    (none, if all is well).
    """
    import uuid

    from fastapi.testclient import TestClient

    import mifo_cli
    import worker.tasks  # noqa: F401  the control worker's tasks
    from api.main import create_app
    from core.db import upgrade
    from core.duties import Duties
    from core.models import Concept
    from core.settings import Settings
    from tests.helpers.factories import concept_meta
    from tests.helpers.images import encode, make_scene

    mifo_cli.build_parser()  # every command registered, as `mifo beat` / `mifo worker` do
    settings = Settings(data_dir=data_dir, broker_url="memory://", base_model="tiny", embedded=True)
    upgrade(settings.db_url)
    image, masks = make_scene()
    files = [("image", ("s.png", encode(image)))] + [("masks", ("m.png", encode(m))) for m in masks]
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200, client.get("/readyz").text
        assert client.post("/v1/concepts", files=files).status_code == 202
        concept_id = client.get("/v1/concepts").json()["data"][0]["id"]
        with client.app.state.mifo.sessions() as db:  # type: ignore[attr-defined]
            row = db.get(Concept, uuid.UUID(concept_id))
            row.status, row.meta = "ready", concept_meta(["a", "b"])
            db.commit()
        url = f"/v1/concepts/{concept_id}/syntheses"
        boxes = {"<asset0>": [0.1, 0.1, 0.6, 0.6]}
        ok = client.post(url, json={"prompt": "a photo of <asset0>", "boxes": boxes})
        assert ok.status_code == 202, ok.text
        unknown = client.post(url, json={"prompt": "a photo of <asset7>", "boxes": boxes})
        assert unknown.status_code == 422, unknown.text
        for point, status in (([5, 5], 202), ([500, 5], 422)):  # prompts checked without torch
            clicks = ("prompts", (None, f'[{{"points": [{point}]}}]'))
            segment = client.post("/v1/segmentations", files=[files[0], clicks])
            assert segment.status_code == status, segment.text
    duties = Duties.from_settings(settings)
    duties.reconcile()
    duties.webhooks()
    return [name for name in HEAVY if name in sys.modules]


def test_the_api_path_imports_no_engine_dependency(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "data")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-3000:]


def test_the_service_install_leaves_out_the_engine_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    assert {"service", "engine", "dev"} <= set(extras)
    assert not any(name in base for name in HEAVY)
    assert "torch==" in " ".join(extras["engine"])
    assert "mifo[engine]" in extras["dev"]  # `make install` keeps installing everything
    dockerfile = (ROOT / "deploy" / "Dockerfile.api").read_text()
    assert "'.[service]'" in dockerfile and "TORCH" not in dockerfile


if __name__ == "__main__":
    # Run as a script, its own folder comes first on the path, where tests/worker would stand
    # in for the service's worker package: drop it.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
    # After the installed packages, so that an installed copy of the project is the one tried.
    sys.path.append(str(ROOT))
    heavy = probe(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="mifo-probe-"))
    if heavy:
        sys.exit(f"the API path imported {', '.join(heavy)}")
    print("ok: the API, its validation and the control duties ran without", ", ".join(HEAVY))
