"""Tenants and API keys, and the signed links of local downloads.

A key reads `mifo_<key id>.<secret>`: the id is public (listed, revoked by it), the secret is
256 random bits. Only sha256 of the whole key is stored; a lookup finds the row by id and
compares hashes in constant time. High-entropy secrets need no slow hash: nobody can guess
one, and a stolen hash cannot be turned back into a key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.models import ApiKey, Tenant, utcnow
from core.settings import Settings

PREFIX = "mifo_"
LOCAL_TENANT = "local"  # embedded mode on loopback: requests without a key belong to it
CACHE_SECONDS = 2.0  # a revoked key stops working within this long on every API process
REFRESH_SECONDS = 1.0  # keys in use are reloaded this often, ahead of CACHE_SECONDS
IDLE_SECONDS = 60.0  # keys unused for this long are forgotten


class UnknownKey(LookupError):
    """No such tenant or key."""


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def get_or_create_tenant(session: Session, name: str) -> tuple[Tenant, bool]:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is not None:
        return tenant, False
    tenant = Tenant(name=name, webhook_secret=new_webhook_secret())
    session.add(tenant)
    session.flush()
    return tenant, True


def create_key(session: Session, *, tenant: Tenant) -> tuple[ApiKey, str]:
    """A new key for `tenant`; the clear key is returned here and nowhere else."""
    key_id = "k" + secrets.token_hex(8)
    clear = f"{PREFIX}{key_id}.{secrets.token_urlsafe(32)}"
    row = ApiKey(id=key_id, tenant_id=tenant.id, secret_hash=_hash(clear))
    session.add(row)
    session.flush()
    return row, clear


def list_keys(session: Session) -> list[tuple[ApiKey, str]]:
    rows = session.execute(
        select(ApiKey, Tenant.name).join(Tenant).order_by(Tenant.name, ApiKey.created_at)
    )
    return [(k, n) for k, n in rows]


def revoke_key(session: Session, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise UnknownKey(f"No API key with id {key_id!r}; `mifo keys list` shows them.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def key_id_of(clear: str) -> str | None:
    if not clear.startswith(PREFIX) or "." not in clear:
        return None
    return clear[len(PREFIX) :].split(".", 1)[0] or None


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    key_id: str | None  # None: anonymous (embedded mode on loopback)


class KeyVerifier:
    """Checks bearer keys; rows are cached briefly so that a poll costs no extra query."""

    Entry = tuple[float, str, uuid.UUID, bool]  # loaded at, hash, tenant, revoked

    def __init__(self) -> None:
        self._cache: dict[str, KeyVerifier.Entry] = {}
        self._used: dict[str, float] = {}  # key id: last request
        self._lock = threading.Lock()

    def cached(self, key_id: str) -> KeyVerifier.Entry | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key_id)
            self._used[key_id] = now
        return hit if hit is not None and now - hit[0] <= CACHE_SECONDS else None

    def refresh(self, sessions: sessionmaker[Session]) -> bool:
        """Reload every key used lately in one query (the API runs this every REFRESH_SECONDS),
        so that requests find fresh entries instead of each waiting for a query."""
        since = time.monotonic() - IDLE_SECONDS
        with self._lock:
            wanted = [k for k, used in self._used.items() if used >= since and k in self._cache]
            for k in [k for k, used in self._used.items() if used < since]:
                self._used.pop(k, None)
                self._cache.pop(k, None)
        if not wanted:
            return False
        loaded_at = time.monotonic()  # before the query: never fresher than the row read
        with sessions() as session:
            rows = {r.id: r for r in session.scalars(select(ApiKey).where(ApiKey.id.in_(wanted)))}
        with self._lock:
            for key_id in wanted:
                row = rows.get(key_id)
                self._cache[key_id] = (
                    (loaded_at, "", uuid.UUID(int=0), True)
                    if row is None
                    else (loaded_at, row.secret_hash, row.tenant_id, row.revoked_at is not None)
                )
        return False

    def load(self, sessions: sessionmaker[Session], key_id: str) -> KeyVerifier.Entry:
        with sessions() as session:
            row = session.get(ApiKey, key_id)
            entry = (
                (time.monotonic(), "", uuid.UUID(int=0), True)
                if row is None
                else (time.monotonic(), row.secret_hash, row.tenant_id, row.revoked_at is not None)
            )
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
                self._used.clear()
            self._cache[key_id] = entry
        return entry

    @staticmethod
    def check(clear: str, key_id: str, entry: KeyVerifier.Entry) -> Principal | None:
        _, stored, tenant_id, revoked = entry
        # Compare even for unknown or revoked keys, so that timing tells nothing.
        same = hmac.compare_digest(_hash(clear), stored or "0" * 64)
        return Principal(tenant_id, key_id) if same and not revoked else None


# Signed download links (local storage; S3 links are presigned by S3 itself).


def signing_key(settings: Settings) -> bytes:
    """MIFO_URL_SIGNING_KEY, or a random key kept in data_dir (one host: embedded mode)."""
    if settings.url_signing_key is not None:
        return settings.url_signing_key.get_secret_value().encode()
    path = Path(settings.data_dir).resolve() / "url-signing.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}")
        tmp.write_text(secrets.token_urlsafe(32))
        tmp.chmod(0o600)
        tmp.replace(path) if not path.exists() else tmp.unlink()
    return path.read_text().strip().encode()


def sign_link(key: bytes, artifact_id: uuid.UUID, expires: int) -> str:
    mac = hmac.new(key, f"{artifact_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def link_valid(key: bytes, artifact_id: uuid.UUID, expires: int, signature: str) -> bool:
    # As bytes: compare_digest refuses str with non-ASCII characters.
    return hmac.compare_digest(
        sign_link(key, artifact_id, expires).encode(), signature.encode("utf-8", "replace")
    )
