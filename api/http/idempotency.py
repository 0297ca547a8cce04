"""`Idempotency-Key` on POST: the same key and body answer the original response again.

The key is claimed (a row) before the work starts and filled with the response after it;
the job id is written in the same transaction as the job, so a crash in between still
replays the job. A request that fails releases its key. Keys are per tenant and expire after
MIFO_IDEMPOTENCY_SECONDS (the retention task deletes them).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Header
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.models import IdempotencyKey, Job, utcnow
from core.problems import Problem

STALE_SECONDS = 60  # a claim without a job after this long was abandoned by a dead process

KeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a POST safely: the same key and body return the original job.",
    ),
]


def fingerprint(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


class Idempotency:
    def __init__(self, session: Session, row: IdempotencyKey | None) -> None:
        self.session = session
        self.row = row
        self.replay: JSONResponse | None = None

    @classmethod
    def begin(
        cls,
        session: Session,
        *,
        tenant_id: uuid.UUID,
        key: str | None,
        fingerprint: str,
        ttl: int,
        render: Callable[[uuid.UUID], Any],
    ) -> Idempotency:
        if key is None:
            return cls(session, None)
        for _ in range(2):
            row = session.get(IdempotencyKey, (tenant_id, key), populate_existing=True)
            now = utcnow()
            if row is not None and row.expires_at < now:
                session.delete(row)
                session.commit()
                row = None
            if row is None:
                row = IdempotencyKey(
                    tenant_id=tenant_id,
                    key=key,
                    fingerprint=fingerprint,
                    expires_at=now + timedelta(seconds=ttl),
                )
                session.add(row)
                try:
                    session.commit()
                except IntegrityError:  # a concurrent request with the same key won
                    session.rollback()
                    continue
                return cls(session, row)
            return cls._existing(session, row, fingerprint, now, render)
        raise _in_use("Concurrent use of the key.", "retry in a second")

    @classmethod
    def _existing(
        cls,
        session: Session,
        row: IdempotencyKey,
        fingerprint: str,
        now: datetime,
        render: Callable[[uuid.UUID], Any],
    ) -> Idempotency:
        """A key seen before: the answer to replay, a takeover of an abandoned claim, or a
        refusal (another request's key, or one still being handled)."""
        if row.fingerprint != fingerprint:
            raise Problem(
                "idempotency_key_reused",
                f"The key {row.key!r} was first used with a different method, path or body.",
                field="Idempotency-Key",
                fix="send a new key for a new request, or repeat the original body exactly",
            )
        if row.status_code is not None and (row.response is not None or row.job_id):
            this = cls(session, None)
            headers = (row.response or {}).get("headers") or {}
            body = (row.response or {}).get("body")
            if body is None:
                body = jsonable_encoder(render(row.job_id))  # type: ignore[arg-type]
            this.replay = JSONResponse(body, status_code=row.status_code, headers=headers)
            this.replay.headers["Idempotent-Replayed"] = "true"
            return this
        stale = (now - row.created_at).total_seconds() >= STALE_SECONDS
        if stale and _take_over(session, row, now):  # abandoned by a process that died
            return cls(session, row)
        raise _in_use(
            f"A request with the key {row.key!r} is still being handled.",
            "retry in a second; it will answer the same job",
        )

    def attach(self, job_id: uuid.UUID, status_code: int = 202) -> None:
        """Record the job in the caller's transaction (committed with the job)."""
        if self.row is not None:
            self.row.job_id, self.row.status_code = job_id, status_code
            self.session.add(self.row)

    def complete(self, body: Any, headers: dict[str, str]) -> None:
        if self.row is not None:
            self.row.response = {"body": jsonable_encoder(body), "headers": headers}
            self.session.add(self.row)
            self.session.commit()

    def abandon(self) -> None:
        if self.row is None:
            return
        self.session.rollback()
        row = self.session.get(IdempotencyKey, (self.row.tenant_id, self.row.key))
        if row is not None and (row.job_id is None or self.session.get(Job, row.job_id) is None):
            self.session.delete(row)
            self.session.commit()


def _in_use(detail: str, fix: str) -> Problem:
    return Problem(
        "idempotency_key_in_use",
        detail,
        field="Idempotency-Key",
        fix=fix,
        headers={"Retry-After": "1"},
    )


def _take_over(session: Session, row: IdempotencyKey, now: datetime) -> bool:
    """Claim a key abandoned by a process that died; False when a concurrent request did.

    One conditional UPDATE (the claim time read, still no job) decides among concurrent
    retries on PostgreSQL and SQLite alike: only one of them matches the row."""
    won = session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.tenant_id == row.tenant_id,
            IdempotencyKey.key == row.key,
            IdempotencyKey.created_at == row.created_at,
            IdempotencyKey.job_id.is_(None),
        )
        .values(created_at=now),
        execution_options={"synchronize_session": False},
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if won != 1:
        return False
    session.refresh(row)
    return True
