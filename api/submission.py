"""The ending every job-creating POST shares: 202 with `Location`, and the Idempotency-Key
completed with the answer (or released when the submission failed)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from sqlalchemy.orm import Session

from api.idempotency import Idempotency, fingerprint


def idempotent(
    session: Session,
    state: Any,
    tenant: uuid.UUID,
    key: str | None,
    render: Callable[[uuid.UUID], Any],
    *request_parts: bytes | str,
) -> Idempotency:
    """Claim the request's Idempotency-Key (or find the answer to replay): `request_parts`
    identify the request (method and path, then the body)."""
    return Idempotency.begin(
        session,
        tenant_id=tenant,
        key=key,
        ttl=state.settings.idempotency_seconds,
        fingerprint=fingerprint(*request_parts),
        render=render,
    )


def accepted(
    request: Request,
    response: Response,
    idem: Idempotency,
    submit: Callable[[], uuid.UUID],
    present: Callable[[uuid.UUID], Any],
    *,
    location: bool = True,
) -> Any:
    """Run `submit` (a core.submissions function: it returns the job's id) and answer with
    `present(job_id)`; `location`: point at the job to poll."""
    if idem.replay is not None:
        return idem.replay
    try:
        job_id = submit()
        body = present(job_id)
    except BaseException:
        idem.abandon()
        raise
    headers = {}
    if location:
        headers["Location"] = request.app.url_path_for("get_job", job_id=str(job_id))
        response.headers["Location"] = headers["Location"]
    idem.complete(body, headers)
    return body
