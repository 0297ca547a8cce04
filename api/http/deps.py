"""Dependencies with Annotated aliases, so route signatures read like prose."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.http.state import AppState
from core.auth import KeyVerifier, Principal, key_id_of
from core.problems import Problem
from core.ratelimit import retry_after
from core.settings import Settings
from core.storage import Storage

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False, description="An API key from `mifo keys create`.")


# Plain `def` dependencies run in the thread pool: the cheap ones are `async` to skip the hop.
async def get_state(request: Request) -> AppState:
    return request.app.state.mifo


def get_session(state: Annotated[AppState, Depends(get_state)]) -> Iterator[Session]:
    session = state.sessions()
    try:
        yield session
    finally:
        # Runs after the response has started: a connection lost meanwhile must not turn
        # into a second error (the pool drops the dead connection by itself).
        try:
            session.close()
        except SQLAlchemyError as exc:
            log.warning("closing a database session failed: %s", exc)


async def get_settings(state: Annotated[AppState, Depends(get_state)]) -> Settings:
    return state.settings


async def get_storage(state: Annotated[AppState, Depends(get_state)]) -> Storage:
    return state.storage


def _unauthorized(detail: str) -> Problem:
    return Problem(
        "unauthorized",
        detail,
        field="Authorization",
        fix="send `Authorization: Bearer <key>` with a key from `mifo keys create --tenant NAME`",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def authenticate(request: Request) -> Principal:
    """The caller's tenant, from the bearer key; then one token from its rate-limit bucket.

    Called directly by the status poll, the hottest route, which skips dependency solving;
    every other route reaches it through `get_principal`."""
    state: AppState = request.app.state.mifo
    header = request.headers.get("authorization")
    if not header:
        if state.anonymous_tenant is None:
            raise _unauthorized("This server requires an API key.")
        principal = Principal(state.anonymous_tenant, None)
    else:
        scheme, _, clear = header.partition(" ")
        if scheme.lower() != "bearer" or not clear:
            raise _unauthorized("The Authorization header is not `Bearer <key>`.")
        key_id = key_id_of(clear)
        if key_id is None:
            raise _unauthorized("The API key is malformed.")
        entry = state.verifier.cached(key_id)
        if entry is None:
            entry = await run_in_threadpool(state.verifier.load, state.sessions, key_id)
        found = KeyVerifier.check(clear, key_id, entry)
        if found is None:
            raise _unauthorized("The API key is unknown or revoked.")
        principal = found
    if state.limiter is not None:
        wait = await state.limiter.take(principal.key_id or f"anon:{principal.tenant_id}")
        if wait > 0:
            s = state.settings
            raise Problem(
                "rate_limited",
                f"This key may send {s.rate_limit_burst} requests in any "
                f"{state.limiter.window} s ({s.rate_limit_burst / state.limiter.window:g} per second on "
                "average).",
                field="Authorization",
                fix=f"wait {retry_after(wait)} s (Retry-After) and slow down; the limit is "
                "MIFO_RATE_LIMIT_PER_SECOND / MIFO_RATE_LIMIT_BURST on the server",
                headers={"Retry-After": retry_after(wait)},
            )
    return principal


# What `bearer` adds to each operation of the OpenAPI schema, for routes without it.
BEARER_SECURITY: list[dict[str, list[str]]] = [{"HTTPBearer": []}]


async def get_principal(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    # `bearer` is here so that the OpenAPI schema documents the scheme; `authenticate` reads
    # the header itself.
    return await authenticate(request)


async def get_tenant(principal: Annotated[Principal, Depends(get_principal)]) -> uuid.UUID:
    return principal.tenant_id


StateDep = Annotated[AppState, Depends(get_state)]
SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
TenantDep = Annotated[uuid.UUID, Depends(get_tenant)]
