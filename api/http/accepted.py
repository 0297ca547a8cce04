"""The ending every job-creating POST shares: 202 with `Location`, and the Idempotency-Key
completed with the answer (or released when the submission failed); with `Prefer: wait`
(api/http/prefer.py), the wait for the job's end without a thread or a connection."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.http.events import notices
from api.http.idempotency import Idempotency, fingerprint
from api.http.prefer import Wait
from api.http.state import STOPPING, STOPPING_POLL_SECONDS, AppState
from core.jobs import TERMINAL
from core.models import Job

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Accepted:
    job_id: uuid.UUID
    body: Any  # the 202 body, or the replayed response of an earlier request with the key


def accept(
    request: Request,
    response: Response,
    idem: Idempotency,
    submit: Callable[[], uuid.UUID],
    present: Callable[[uuid.UUID], Any],
    *,
    location: bool = True,
) -> Accepted:
    """Run `submit` (a core.submissions function: it returns the job's id) and answer with
    `present(job_id)`; `location`: point at the job to poll."""
    if idem.replay is not None:
        replayed = json.loads(bytes(idem.replay.body))
        return Accepted(uuid.UUID(replayed.get("job", replayed)["id"]), idem.replay)
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
    return Accepted(job_id, body)


async def answer(
    request: Request,
    response: Response,
    state: AppState,
    session: Session,
    wait: Wait | None,
    done: Accepted,
    finished: Callable[[Session, uuid.UUID], Any],
) -> Any:
    """The answer to a job-creating POST: the 202 of `done`, or with `Prefer: wait` 200 with
    `finished(session, job_id)` (None: nothing to show, the 202 then) once the job ended
    within the wait. A replay waits too, and keeps its headers."""
    if wait is None:
        return done.body
    body = None
    try:
        await run_in_threadpool(session.close)  # no connection is held while waiting
        if await until_ended(request, state, done.job_id, wait.seconds):
            body = await run_in_threadpool(_render, state, finished, done.job_id)
    except Exception as exc:  # the job is stored: its 202 is still the right answer
        log.warning("job %s: waiting for its end failed (%s); answering 202", done.job_id, exc)
    replay = done.body if isinstance(done.body, Response) else None
    if body is None:  # the 202, as without the header
        (replay or response).headers.update(wait.applied)
        return done.body
    if replay is not None:
        kept = {
            k: v for k, v in replay.headers.items() if k not in ("content-length", "content-type")
        }
        return JSONResponse(jsonable_encoder(body), headers=kept | wait.applied)
    response.status_code = 200
    response.headers.update(wait.applied)
    return body


async def until_ended(request: Request, state: AppState, job_id: uuid.UUID, seconds: float) -> bool:
    """Whether the job ended (or is gone) within `seconds`. Waits on "job changed" notices
    (core.events: Redis pub/sub, or polling), holding no thread between two reads of the
    job's status; a client that goes away ends the wait at once (the wait for its
    disconnect runs beside the wait for a change), and so does the server's stop (STOPPING,
    within STOPPING_POLL_SECONDS: the client gets its 202 before the drain cuts it off)."""
    ended = False
    async with anyio.create_task_group() as tasks:

        async def client_gone() -> None:
            await _disconnect(request)
            log.info("job %s: the client went away; its wait ends", job_id)
            tasks.cancel_scope.cancel()

        async def server_stopping() -> None:
            while not STOPPING.is_set():
                await anyio.sleep(STOPPING_POLL_SECONDS)
            log.info("job %s: the server is stopping; its wait ends", job_id)
            tasks.cancel_scope.cancel()

        tasks.start_soon(client_gone)
        tasks.start_soon(server_stopping)
        with anyio.move_on_after(seconds):
            async with notices(state.settings.events_url, job_id) as changed:
                while not (ended := await run_in_threadpool(_ended, state, job_id)):
                    await changed()
        tasks.cancel_scope.cancel()
    return ended


async def _disconnect(request: Request) -> None:
    """Return once the client has gone (ASGI `http.disconnect`; the body was read before)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _ended(state: AppState, job_id: uuid.UUID) -> bool:
    with state.sessions() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    return status is None or status in TERMINAL


def _render(
    state: AppState, finished: Callable[[Session, uuid.UUID], Any], job_id: uuid.UUID
) -> Any:
    """`finished`'s body; None once the job is gone (deleted with its concept or tenant)."""
    with state.sessions() as session:
        if session.get(Job, job_id) is None:
            return None
        return finished(session, job_id)
