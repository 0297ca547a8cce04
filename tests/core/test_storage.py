"""Object storage: the local folder and S3 (a real S3-compatible HTTP server: moto)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from core.storage import LocalStorage, Storage, StorageError, storage_from_settings
from tests.helpers.servers import s3_server


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server(bucket="unit") as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        url = (tmp_path / "objects").as_uri()
        endpoint = None
    else:
        url, endpoint = f"s3://unit/run-{tmp_path.name}", request.getfixturevalue("s3_endpoint")
    return storage_from_settings(Settings(storage_url=url, s3_endpoint_url=endpoint))


def test_put_get_list_delete(storage: Storage) -> None:
    storage.check()
    storage.put("concepts/a/x.png", b"1", "image/png")
    storage.put("concepts/a/sub/y.png", b"22")
    storage.put("concepts/b/z.png", b"333")
    assert storage.get("concepts/a/sub/y.png") == b"22"
    assert storage.keys("concepts/a/") == ["concepts/a/sub/y.png", "concepts/a/x.png"]
    storage.delete_prefix("concepts/a/")
    assert storage.keys("concepts/a/") == [] and storage.keys("concepts/b/") == ["concepts/b/z.png"]
    with pytest.raises(StorageError):
        storage.get("concepts/a/x.png")


def test_download_url(storage: Storage) -> None:
    storage.put("concepts/c/i.png", b"png!", "image/png")
    url = storage.presigned_url("concepts/c/i.png")
    if isinstance(storage, LocalStorage):
        assert url is None and storage.local_path("concepts/c/i.png").read_bytes() == b"png!"
    else:
        r = httpx.get(url)
        assert r.content == b"png!" and r.headers["content-type"] == "image/png"


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../../b", ""])
def test_keys_cannot_escape(storage: Storage, key: str) -> None:
    with pytest.raises(StorageError):
        storage.put(key, b"x")


def test_unreachable_s3_fails_the_check() -> None:
    store = storage_from_settings(
        Settings(storage_url="s3://nothing/p", s3_endpoint_url="http://127.0.0.1:1")
    )
    with pytest.raises(StorageError):
        store.check()
