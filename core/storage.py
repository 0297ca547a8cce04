"""Object storage: one interface, an S3 back end (boto3) and a local-folder back end.

Keys are relative paths ("concepts/<id>/inputs/image.png"); every object of a concept lives
under its prefix so that deleting a concept is one prefix delete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import unquote, urlsplit

from core.settings import Settings


class StorageError(RuntimeError):
    """The object store refused or could not be reached."""


class Storage(Protocol):
    def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None: ...
    def get(self, key: str) -> bytes: ...
    def download(self, key: str, path: Path) -> None:
        """Write the object to the file `path`, streamed, never whole in memory."""

    def delete_prefix(self, prefix: str) -> None: ...
    def keys(self, prefix: str) -> list[str]: ...
    def presigned_url(self, key: str) -> str | None:
        """A URL a client can fetch directly, or None when the API must stream the object."""

    def local_path(self, key: str) -> Path | None:
        """The file behind a key when the store is a local folder."""

    def check(self) -> None:
        """Raise StorageError unless the store is reachable and writable."""


def _clean(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or any(p in ("..", ".") for p in parts):
        raise StorageError(f"Invalid storage key {key!r}.")
    return key


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        return self.root / _clean(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a reader never sees half a file.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"Cannot write {key!r} under {self.root}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"Cannot read {key!r}: {exc}") from exc

    def download(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except OSError as exc:
            raise StorageError(f"Cannot read {key!r}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)

    def keys(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".part-")
        )

    def presigned_url(self, key: str) -> str | None:
        return None

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".part-"):
                pass
        except OSError as exc:
            raise StorageError(f"Storage folder {self.root} is not writable: {exc}") from exc


class S3Storage:
    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.presign_seconds = settings.presign_seconds
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, signature_version="s3v4")
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            config=config,
        )
        # Inside a compose network the store is http://minio:9000; clients need a public name.
        self.signer = self.client
        if settings.s3_public_endpoint_url:
            self.signer = boto3.client(
                "s3",
                endpoint_url=settings.s3_public_endpoint_url,
                region_name=settings.s3_region,
                config=config,
            )

    def _key(self, key: str) -> str:
        return self.prefix + _clean(key)

    def _call(self, name: str, **kwargs: object) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, name)(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 {name} on bucket {self.bucket!r} failed: {exc}") from exc

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._call("put_object", Key=self._key(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        return self._call("get_object", Key=self._key(key))["Body"].read()

    def download(self, key: str, path: Path) -> None:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # in parts, each written to the file as it arrives
            self.client.download_file(self.bucket, self._key(key), str(path))
        except (Boto3Error, BotoCoreError, ClientError) as exc:
            raise StorageError(
                f"S3 download of {key!r} from {self.bucket!r} failed: {exc}"
            ) from exc

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        token: dict[str, str] = {}
        while True:
            page = self._call("list_objects_v2", Prefix=self._key(prefix), **token)
            yield from (obj["Key"] for obj in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def keys(self, prefix: str) -> list[str]:
        return sorted(k[len(self.prefix) :] for k in self._iter_keys(prefix))

    def delete_prefix(self, prefix: str) -> None:
        batch: list[dict[str, str]] = []
        for key in self._iter_keys(prefix):
            batch.append({"Key": key})
            if len(batch) == 1000:  # the S3 limit per request
                self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})
                batch = []
        if batch:
            self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})

    def presigned_url(self, key: str) -> str | None:
        return self.signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=self.presign_seconds,
        )

    def local_path(self, key: str) -> Path | None:
        return None

    def check(self) -> None:
        self._call("head_bucket")


def storage_from_settings(settings: Settings) -> Storage:
    assert settings.storage_url is not None
    url = urlsplit(settings.storage_url)
    if url.scheme == "file":
        return LocalStorage(Path(unquote(url.path)))
    return S3Storage(url.netloc, url.path, settings)
