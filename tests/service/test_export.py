"""core.export and its route: a stored concept (learned on `tiny`) as the engine's zip, read
from a local folder or downloaded from S3; refusals as problems."""

from __future__ import annotations

import json
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from core import export
from core.models import Concept
from core.problems import Problem
from core.settings import Settings
from core.storage import Storage, storage_from_settings
from mifo_engine.config import LearnConfig
from mifo_engine.export import export_archive

from .factories import make_concept, tenant_id
from .servers import s3_server

QUICK = LearnConfig(phase1_steps=1, reward_steps=1, phase2_steps=1, diagnostic_timesteps=(100,))


@pytest.fixture(scope="module")
def concept_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A concept the engine learned and saved."""
    import torch

    from mifo_engine.learning import learn
    from mifo_engine.models import load_base_model
    from tests.helpers.images import make_scene

    torch.set_num_threads(1)
    image, masks = make_scene()
    concept = learn(load_base_model("tiny"), image, masks, names=["left", "right"], config=QUICK)
    return concept.save(tmp_path_factory.mktemp("learned") / "concept")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server(bucket="unit") as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return storage_from_settings(Settings(storage_url=(tmp_path / "objects").as_uri()))
    endpoint = request.getfixturevalue("s3_endpoint")
    url = f"s3://unit/run-{tmp_path.name}"
    return storage_from_settings(Settings(storage_url=url, s3_endpoint_url=endpoint))


def _stored(session: Session, storage: Storage, folder: Path, *, skip: str = "") -> Concept:
    """A ready concept row whose files are `folder`'s, stored as a worker stores them."""
    concept = make_concept(session)
    concept.files = f"{concept.prefix}concept/attempt-1/"
    concept.meta = json.loads((folder / "concept.json").read_text())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != skip:
            storage.put(concept.files + rel, path.read_bytes())
    session.commit()
    return concept


def _members(archive: Path) -> dict[str, Any]:
    """Each file's bytes; a safetensors file as its parsed header and its tensor bytes (the
    writer lays the header's metadata out in no fixed order)."""
    with zipfile.ZipFile(archive) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    return {
        name: _split(data) if name.endswith(".safetensors") else data
        for name, data in files.items()
    }


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def test_the_archive_is_the_engines_export_of_the_stored_concept(
    session: Session, storage: Storage, concept_dir: Path, tmp_path: Path
) -> None:
    concept = _stored(session, storage, concept_dir)
    archive = export.concept_archive(
        session, storage, concept_id=concept.id, tenant_id=concept.tenant_id
    )
    try:
        expected = export_archive(concept_dir, tmp_path / "direct.zip").folder
        assert _members(archive) == _members(expected)
        assert "pytorch_lora_weights.safetensors" in _members(archive)
    finally:
        archive.unlink()


def test_refusals_name_the_fix(session: Session, storage: Storage, concept_dir: Path) -> None:
    pending = make_concept(session, status="pending")
    ready = _stored(session, storage, concept_dir)
    broken = _stored(session, storage, concept_dir, skip="embeddings.safetensors")
    mine = tenant_id(session)
    cases = [
        (uuid.uuid4(), mine, 404, "not_found"),
        (ready.id, tenant_id(session, "someone else"), 404, "not_found"),
        (pending.id, mine, 409, "concept_not_ready"),
        (broken.id, mine, 500, "concept_unreadable"),
    ]
    before = set(Path(tempfile.gettempdir()).glob("concept-*.zip"))
    for ident, tenant, status, code in cases:
        with pytest.raises(Problem) as refused:
            export.concept_archive(session, storage, concept_id=ident, tenant_id=tenant)
        assert (refused.value.status, refused.value.code) == (status, code)
        assert refused.value.fix
    assert set(Path(tempfile.gettempdir()).glob("concept-*.zip")) == before  # none left


def test_an_unreachable_store_is_503(session: Session, concept_dir: Path) -> None:
    concept = make_concept(session)
    session.commit()
    down = Settings(storage_url="s3://unit/x", s3_endpoint_url="http://127.0.0.1:9")
    with pytest.raises(Problem) as refused:
        export.concept_archive(
            session,
            storage_from_settings(down),
            concept_id=concept.id,
            tenant_id=concept.tenant_id,
        )
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "30"}


def test_the_route_sends_the_zip_and_removes_its_file(
    client: TestClient, session: Session, settings: Settings, concept_dir: Path
) -> None:
    concept = _stored(session, storage_from_settings(settings), concept_dir)
    before = set(Path(tempfile.gettempdir()).glob(f"concept-{concept.id}-*.zip"))
    r = client.get(f"/v1/concepts/{concept.id}/export")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == f'attachment; filename="concept-{concept.id}.zip"'
    archive = Path(tempfile.gettempdir()) / "received.zip"
    archive.write_bytes(r.content)
    try:
        assert "README.md" in _members(archive)
    finally:
        archive.unlink()
    assert set(Path(tempfile.gettempdir()).glob(f"concept-{concept.id}-*.zip")) == before
    refused = client.get(f"/v1/concepts/{uuid.uuid4()}/export")
    assert refused.status_code == 404
    assert refused.headers["content-type"] == "application/problem+json"
