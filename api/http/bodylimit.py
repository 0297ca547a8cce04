"""Request bodies larger than any valid request are refused before they are read (413).

The per-file limit of an upload can only be checked once the multipart parser has received
(and spooled) the file; this pure ASGI middleware answers first. A `Content-Length` over the
bound is refused without reading a byte; a body without one (chunked) is counted as it
arrives and cut off once past the bound. Requests without a body pass untouched.

Hand-written because FastAPI's `max_body_size` (Starlette's RequestBodyLimitMiddleware)
replaces any answer to a body whose Content-Length is over the bound with its own
`text/plain` 413, so the problem JSON naming the field and the fix could never be sent.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.problems import MEDIA_TYPE, Problem

UPLOAD_PATHS = frozenset({"/v1/concepts", "/v1/segmentations"})
# Multipart part headers and the form fields (names, options, webhook) beside the files.
FORM_ALLOWANCE = 1 << 20
# Every other body is JSON of a few KiB (a synthesis request).
JSON_LIMIT = 1 << 20
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def upload_bound(max_upload_bytes: int, max_instances: int) -> int:
    """The most a valid upload can be: the image and every mask at the per-file limit."""
    return max_upload_bytes * (1 + max_instances) + FORM_ALLOWANCE


class BodyLimit:
    """Refuse bodies over `upload_bound(...)` on upload routes, over JSON_LIMIT elsewhere."""

    def __init__(self, app: ASGIApp, *, max_upload_bytes: int, max_instances: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_instances = max_instances
        self.upload_limit = upload_bound(max_upload_bytes, max_instances)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        upload = _route_path(scope) in UPLOAD_PATHS
        limit = self.upload_limit if upload else JSON_LIMIT
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, upload, limit)
            return

        received = 0
        cut = False  # past the limit: the app reads no more
        answered = False  # the 413 has been sent
        started = False  # the app has begun its own answer

        async def limited_receive() -> Message:
            nonlocal received, cut, answered
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut = True
                    if not started:
                        answered = True
                        await self._refuse(scope, receive, send, upload, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the app's answer to a cut-off body is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not answered:
                raise  # the app failing on a body cut off after the 413 is no news

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, upload: bool, limit: int
    ) -> None:
        if upload:
            files, each = 1 + self.max_instances, self.max_upload_bytes
            problem = Problem(
                "file_too_large",
                f"The request body is larger than {limit} bytes, the most an upload can need "
                f"here: the image and {self.max_instances} masks of {each} bytes each "
                f"({files} files), and the form fields.",
                field="body",
                fix=f"send at most {each} bytes per file (MIFO_MAX_UPLOAD_BYTES on the server) "
                f"and at most {self.max_instances} masks (MIFO_MAX_INSTANCES)",
            )
        else:
            problem = Problem(
                "body_too_large",
                f"The request body is larger than {limit} bytes, more than any request to "
                "this route needs.",
                field="body",
                fix=f"send a JSON body of at most {limit} bytes",
            )
        response = JSONResponse(
            problem.body(scope["path"]),
            status_code=413,
            media_type=MEDIA_TYPE,
            headers={"Connection": "close"},  # the rest of the body is never read
        )
        await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses it before the app sees it
    return None
