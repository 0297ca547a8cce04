"""Errors as problem JSON (RFC 9457) with a stable `type`, the field at fault and the fix."""

from __future__ import annotations

import difflib
import logging
import re
from typing import Any

from fastapi import FastAPI, Request, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.checks.inputs import too_deep
from core.db import is_conflict
from core.engine import MifoError
from core.problems import MEDIA_TYPE, PROBLEM_BASE, Problem, from_engine

log = logging.getLogger(__name__)


def _respond(request: Request, problem: Problem) -> JSONResponse:
    return JSONResponse(
        problem.body(request.url.path),
        status_code=problem.status,
        media_type=MEDIA_TYPE,
        headers=problem.headers,
    )


def _location(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header", "form")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "request"


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    wrong_type = _wrong_content_type(request)
    if wrong_type is not None:  # the fields' errors would only hide the real fault
        return _respond(request, wrong_type)
    broken = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
    if broken is not None:
        return _respond(request, _not_json(broken))
    errors = [
        {"field": _location(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid")}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "request", "message": "invalid"}
    # A check of ours (api/checks/inputs.py) says how to fix its field; for a value of the
    # wrong type, the type it must be; pydantic's other checks say it in their message.
    fix = next((e["ctx"]["fix"] for e in exc.errors() if "fix" in (e.get("ctx") or {})), None)
    wanted = TYPES_WANTED.get(str(exc.errors()[0].get("type"))) if exc.errors() else None
    if fix is None and wanted is not None:
        fix = f"send {first['field']} as {wanted}"
    problem = Problem(
        "validation_error",
        f"{first['field']}: {first['message']}",
        field=first["field"],
        fix=fix or "correct the listed fields (see the OpenAPI schema)",
        errors=errors,
    )
    return _respond(request, problem)


# pydantic's error types for a value of the wrong JSON type, and what to send instead.
TYPES_WANTED = {
    "bool_type": "a JSON boolean: true or false",
    "int_type": "a whole number, without quotes",
    "float_type": "a number, without quotes",
    "string_type": "a string in quotes",
    "list_type": "a JSON array",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
}


def _not_json(error: dict[str, Any]) -> Problem:
    """The body could not be parsed: say where, in the parser's words, not as a field."""
    where = error.get("loc", ())[-1]
    why = (error.get("ctx") or {}).get("error", "not JSON")
    at = f" at character {where}" if isinstance(where, int) else ""
    return Problem(
        "invalid_json",
        f"The body is not valid JSON: {why}{at}.",
        field="body",
        fix="send one JSON object with double-quoted names and no trailing commas "
        "(curl --json '{...}')",
    )


def _wrong_content_type(request: Request) -> Problem | None:
    """415 naming the content type a route reads, when the body came as another one (a JSON
    body to a multipart route reads as 'image: Field required' otherwise)."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    body = list(dependant.body_params) if dependant is not None else []
    sent = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body:
        return None
    if any(isinstance(p.field_info, params.Form) for p in body):  # File is a Form too
        if sent == "multipart/form-data":
            return None
        parts = ", ".join(p.alias for p in body)
        wanted, fix = (
            "multipart/form-data",
            f"send multipart/form-data with the parts {parts} (curl -F part=value, "
            "-F image=@file.png)",
        )
    else:
        if sent == "application/json" or (
            sent.startswith("application/") and sent.endswith("+json")
        ):
            return None
        wanted, fix = (
            "application/json",
            "send a JSON object with Content-Type: application/json (curl --json '{...}')",
        )
    came = f"came as {sent}" if sent else "came without a Content-Type header"
    return Problem(
        "unsupported_media_type",
        f"{request.method} {request.url.path} reads {wanted}; the body {came}.",
        field="Content-Type",
        fix=fix,
    )


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error"
    )
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        # Only `options` may nest at all; which field did, the parser does not say.
        detail, fix = too_deep()
        return _respond(
            request,
            Problem(
                "body_too_deep",
                f"The JSON body nests deeper than it can be read; {detail}",
                field="body",
                fix=fix,
            ),
        )
    problem = Problem(
        code,
        str(exc.detail),
        status=exc.status_code if code == "http_error" else None,
        headers=dict(exc.headers or {}) or None,
    )
    if exc.status_code == 400:
        problem.field, problem.fix = "body", "send well-formed JSON or multipart (see /docs)"
    if exc.status_code == 404 and request.scope.get("route") is None:
        problem.detail = f"No route {request.method} {request.url.path}."
        problem.fix = _nearest_route(request)
    if exc.status_code == 405:
        allow = _allowed_methods(request)
        problem.headers = {**(problem.headers or {}), "Allow": ", ".join(allow)}
        problem.detail = f"{request.method} is not allowed on {request.url.path}."
        problem.fix = f"use {' or '.join(allow)}"
    return _respond(request, problem)


def _nearest_route(request: Request) -> str:
    """The route a mistyped path most likely meant (ids compared as ids), or where to look;
    read from the OpenAPI schema, which lists every public route with its methods."""

    def shape(path: str) -> str:
        return re.sub(r"\{[^}]+\}|[0-9a-f]{8}-[0-9a-f-]{27}", "{id}", path)

    routes = request.app.openapi().get("paths", {})
    shapes = {shape(path): path for path in routes}
    close = difflib.get_close_matches(shape(request.url.path), list(shapes), n=1, cutoff=0.8)
    if not close:
        return "see the routes at /docs (every public route starts with /v1/)"
    path = shapes[close[0]]
    methods = " or ".join(m.upper() for m in routes[path])
    return f"did you mean {methods} {path}? (every route: /docs)"


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's 405 names one route's only."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


async def _problem(request: Request, exc: Problem) -> JSONResponse:
    return _respond(request, exc)


async def _engine(request: Request, exc: MifoError) -> JSONResponse:
    return _respond(request, from_engine(exc))


async def _database(request: Request, exc: Exception) -> JSONResponse:
    if is_conflict(exc):  # a healthy database refused a collision: not an outage
        log.warning("conflict on %s %s: %s", request.method, request.url.path, exc)
        conflict = Problem(
            "concurrent_change",
            "Another request changed the same data at the same moment; nothing was changed.",
            fix="retry the request (with the same Idempotency-Key)",
            headers={"Retry-After": "1"},
        )
        return _respond(request, conflict)
    log.error("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    problem = Problem(
        "database_unavailable",
        "The request could not be handled because the database cannot be reached; "
        "nothing was changed.",
        fix="retry later (Retry-After); the service reconnects by itself",
        headers={"Retry-After": "5"},
    )
    return _respond(request, problem)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    problem = Problem(
        "internal_error",
        "The server failed to handle this request; the error was logged.",
        fix="retry later; report the time of the request if it persists",
    )
    return _respond(request, problem)


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)  # type: ignore[arg-type]
    app.add_exception_handler(MifoError, _engine)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    # Connection failures (refused, reset, pool exhausted); SQL mistakes stay 500s.
    for exc in (OperationalError, InterfaceError, SQLTimeoutError):
        app.add_exception_handler(exc, _database)
    app.add_exception_handler(Exception, _unexpected)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route: problem JSON for each status it can answer."""
    return {status: PROBLEM_RESPONSE for status in statuses}


PROBLEM_RESPONSE: dict[str, Any] = {
    "description": "Problem details (RFC 9457)",
    "content": {
        MEDIA_TYPE: {
            "example": {
                "type": PROBLEM_BASE + "empty_mask",
                "title": "Empty mask",
                "status": 422,
                "detail": "Mask 1 has no foreground pixels.",
                "instance": "/v1/concepts",
                "field": "masks[1]",
                "fix": "paint the instance white on black, or check the mask threshold",
            }
        }
    },
}
