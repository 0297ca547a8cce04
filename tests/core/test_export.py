"""core.export and its route: a stored concept (learned on `tiny`) as the engine's zip, read
from a local folder or downloaded from S3, the same bytes every time; refusals as problems,
and no temporary file left behind."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from core import export
from core.db import make_engine, make_sessionmaker
from core.models import Concept
from core.problems import Problem
from core.settings import Settings
from core.storage import Storage, storage_from_settings
from mifo_engine.config import LearnConfig
from mifo_engine.export import export_archive
from tests.helpers.factories import make_concept, tenant_id
from tests.helpers.servers import s3_server

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


def _bytes(archive: export.Archive) -> bytes:
    return b"".join(archive.chunks())


def _leftovers(concept_id: object = "") -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"concept-{concept_id}*.zip"))


def test_the_archive_is_the_engines_export_of_the_stored_concept(
    session: Session, storage: Storage, concept_dir: Path, tmp_path: Path
) -> None:
    concept = _stored(session, storage, concept_dir)
    archive = export.concept_archive(
        session, storage, concept_id=concept.id, tenant_id=concept.tenant_id
    )
    assert _leftovers(concept.id) == set()  # unlinked once open: a dropped response leaves none
    data = _bytes(archive)
    expected = export_archive(concept_dir, tmp_path / "direct.zip").folder
    assert data == expected.read_bytes() and len(data) == archive.size
    assert archive.etag == f'"{hashlib.sha256(data).hexdigest()}"'
    with zipfile.ZipFile(expected) as zf:
        assert "pytorch_lora_weights.safetensors" in zf.namelist()


def test_a_concept_deleted_while_its_archive_is_built_is_404(
    session: Session,
    storage: Storage,
    settings: Settings,
    concept_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    concept = _stored(session, storage, concept_dir)
    ident, tenant, prefix = concept.id, concept.tenant_id, concept.prefix
    sessions = make_sessionmaker(make_engine(settings.db_url))

    def delete() -> None:
        with sessions() as other:
            other.delete(other.get(Concept, ident))
            other.commit()
        storage.delete_prefix(prefix)

    if storage.local_path(prefix) is not None:  # the build reads the stored folder itself
        build = export.engine.export_archive
        monkeypatch.setattr(export.engine, "export_archive", lambda *a: (delete(), build(*a)))
    else:  # the build downloads the objects first: delete after the first one
        download = storage.download
        monkeypatch.setattr(storage, "download", lambda *a: (download(*a), delete()))
    with pytest.raises(Problem) as refused:
        export.concept_archive(session, storage, concept_id=ident, tenant_id=tenant)
    assert (refused.value.status, refused.value.code) == (404, "not_found")
    assert _leftovers(ident) == set()


def test_a_failed_build_leaves_no_file(
    session: Session, storage: Storage, concept_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    concept = _stored(session, storage, concept_dir)

    def half_then_fail(folder: str, archive: str) -> None:
        Path(archive).write_bytes(b"PK half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.engine, "export_archive", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export.concept_archive(session, storage, concept_id=concept.id, tenant_id=concept.tenant_id)
    assert _leftovers(concept.id) == set()


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
    before = _leftovers()
    for ident, tenant, status, code in cases:
        with pytest.raises(Problem) as refused:
            export.concept_archive(session, storage, concept_id=ident, tenant_id=tenant)
        assert (refused.value.status, refused.value.code) == (status, code)
        assert refused.value.fix
    assert _leftovers() == before  # none left


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


def test_the_route_sends_the_same_zip_every_time_and_whole(
    client: TestClient, session: Session, settings: Settings, concept_dir: Path
) -> None:
    concept = _stored(session, storage_from_settings(settings), concept_dir)
    url = f"/v1/concepts/{concept.id}/export"
    r = client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == f'attachment; filename="concept-{concept.id}.zip"'
    assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
    assert int(r.headers["content-length"]) == len(r.content)
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert "README.md" in zf.namelist()
    # ranges are not served, so no two answers can be spliced: a Range (with or without
    # If-Range) gets the whole archive, the same bytes as before
    for extra in ({}, {"If-Range": r.headers["etag"]}, {"If-Range": '"another"'}):
        again = client.get(url, headers={"Range": "bytes=10-19", **extra})
        assert again.status_code == 200 and "content-range" not in again.headers
        assert "accept-ranges" not in again.headers
        assert again.content == r.content and again.headers["etag"] == r.headers["etag"]
    assert _leftovers(concept.id) == set()
    refused = client.get(f"/v1/concepts/{uuid.uuid4()}/export")
    assert refused.status_code == 404
    assert refused.headers["content-type"] == "application/problem+json"


def test_builds_beyond_the_limit_are_503_until_one_ends(
    client: TestClient,
    session: Session,
    settings: Settings,
    concept_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = storage_from_settings(settings)
    concept = _stored(session, storage, concept_dir)
    ident, tenant = concept.id, concept.tenant_id
    sessions = make_sessionmaker(make_engine(settings.db_url))
    build, started, release = (
        export.engine.export_archive,
        threading.Semaphore(0),
        threading.Event(),
    )

    def slow(folder: str, archive: str) -> None:
        started.release()
        assert release.wait(60)
        build(folder, archive)

    def one() -> export.Archive:
        with sessions() as s:
            return export.concept_archive(s, storage, concept_id=ident, tenant_id=tenant)

    monkeypatch.setattr(export.engine, "export_archive", slow)
    with concurrent.futures.ThreadPoolExecutor(export.MAX_BUILDS) as pool:
        running = [pool.submit(one) for _ in range(export.MAX_BUILDS)]
        for _ in running:
            assert started.acquire(timeout=60)
        busy = client.get(f"/v1/concepts/{ident}/export")
        release.set()
        archives = [f.result(timeout=60) for f in running]
    assert busy.status_code == 503 and busy.headers["retry-after"] == "10"
    problem = busy.json()
    assert problem["type"] == "/problems/export_busy" and "retry" in problem["fix"]
    assert len({_bytes(a) for a in archives}) == 1
    assert client.get(f"/v1/concepts/{ident}/export").status_code == 200  # the slots are free
