"""The Server-Sent Events stream of one job (GET /v1/jobs/{id}/events)."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import Request
from fastapi.sse import ServerSentEvent
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.http.state import AppState
from api.present import JOB_LOAD, Presenter
from core import events
from core.jobs import TERMINAL
from core.models import Job

log = logging.getLogger(__name__)

# A queued job's place changes when other jobs move, which sends it no message: with pub/sub
# its stream re-reads the row at least this often (polling mode reads it more often anyway).
QUEUED_SECONDS = 2.0


def _snapshot(request: Request, state: AppState, job_id: uuid.UUID) -> dict | None:
    with state.sessions() as session:
        job = session.scalars(select(Job).where(Job.id == job_id).options(*JOB_LOAD)).one_or_none()
        if job is None:
            return None
        return Presenter(request, state).job(job).model_dump(mode="json")


async def job_stream(
    request: Request, state: AppState, job_id: uuid.UUID
) -> AsyncIterator[ServerSentEvent]:
    """Emit the job now and after every change; stop after a terminal state. Framing and
    keep-alive comments are FastAPI's (EventSourceResponse).

    Changes are noticed through Redis pub/sub (workers publish after each write) when
    MIFO_EVENTS_URL or a Redis broker is configured, by polling the row otherwise (and while
    Redis does not answer). A queued
    job's place in its queue is a change (a `progress` event); its start estimate drifting
    alone is not, so the stream does not repeat a body that only the clock changed."""
    last: dict | None = None
    seq = 0
    async with notices(state.settings.events_url, job_id) as wait:
        while not await request.is_disconnected():
            snap = await run_in_threadpool(_snapshot, request, state, job_id)
            if snap is None:  # deleted with its concept
                yield _event(seq + 1, "deleted", {"id": str(job_id)})
                return
            if _seen(snap) != _seen(last):
                seq += 1
                kind = "status" if last is None or snap["status"] != last["status"] else "progress"
                yield _event(seq, kind, snap)
                last = snap
                if snap["status"] in TERMINAL:
                    return
            with anyio.move_on_after(QUEUED_SECONDS if snap["queue"] else None):
                await wait()


def _seen(snap: dict | None) -> dict | None:
    """What a new event is sent for: the body less the queue's start estimate."""
    if snap is None or not snap.get("queue"):
        return snap
    return snap | {"queue": {k: snap["queue"][k] for k in ("position", "ahead")}}


def _event(seq: int, kind: str, data: dict) -> ServerSentEvent:
    return ServerSentEvent(
        raw_data=json.dumps(data, separators=(",", ":")), event=kind, id=str(seq)
    )


@contextlib.asynccontextmanager
async def notices(url: str | None, job_id: uuid.UUID) -> AsyncIterator[Callable[[], Any]]:
    """core.events.changes, or polling once Redis fails: a lost notice channel must not fail
    a request about a job that exists (a stream, a POST that created the job and waits)."""
    stack = contextlib.AsyncExitStack()
    changed: Callable[[], Any] | None = None
    try:
        changed = await stack.enter_async_context(events.changes(url, job_id))
    except Exception as exc:
        log.warning("job %s: no change notices (%s); polling its row instead", job_id, exc)

    async def wait() -> None:
        nonlocal changed
        if changed is not None:
            try:
                return await changed()
            except Exception as exc:
                log.warning("job %s: change notices lost (%s); polling its row", job_id, exc)
                changed = None
        await anyio.sleep(events.POLL_SECONDS)

    try:
        yield wait
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await stack.aclose()  # even when the wait ran out: the subscription is closed
