"""Problems (RFC 9457): what went wrong, the field at fault and the fix, with the HTTP
status it answers. Raised by the services in core and by the routes; api/problems.py
renders them as problem JSON."""

from __future__ import annotations

import logging
from typing import Any

from core.engine import MifoError, ModelLoadError

log = logging.getLogger(__name__)

# Stable problem types as URI references relative to the API (RFC 9457, 3.1.1): no outside
# domain is implied; clients compare them as strings.
PROBLEM_BASE = "/problems/"
MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """A refusal with the fields a client needs to fix its request."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        fix: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.field, self.fix, self.headers, self.extra = field, fix, headers, extra

    def body(self, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.field is not None:
            body["field"] = self.field
        if self.fix is not None:
            body["fix"] = self.fix
        return body | self.extra


def not_found(what: str, ident: object) -> Problem:
    return Problem(
        404,
        "not_found",
        "Not found",
        f"No {what} with id {ident}.",
        fix=f"check the id; list {what}s with GET /v1/{what}s",
    )


def unavailable(what: str, exc: Exception) -> Problem:
    return Problem(
        503,
        f"{what}_unavailable",
        f"The {what} is unavailable",
        f"The request was not accepted because the {what} failed: {exc}",
        fix="retry later; nothing was stored",
        headers={"Retry-After": "30"},
    )


_TITLES = {
    "invalid_input": "Invalid input image or mask",
    "mask_size_mismatch": "Mask size does not match the image",
    "empty_mask": "Empty mask",
    "instance_too_small": "Instance too small",
    "too_many_instances": "Too many instances",
    "unreadable_image": "Unreadable image",
    "invalid_config": "Invalid option",
    "invalid_layout": "Invalid prompt or box layout",
}


def from_engine(exc: MifoError, *, prefix: str = "", status: int = 422) -> Problem:
    """An engine rejection as a 4xx problem; `prefix` places the field inside the request.

    A base model the server cannot load is the server's problem, not the request's: 503."""
    if isinstance(exc, ModelLoadError):
        log.error("base model unavailable: %s", exc)
        fix = "retry later; the operator must fix MIFO_BASE_MODEL"
        return Problem(
            503,
            exc.code,
            "The base model is unavailable",
            f"The server could not load its base model: {exc.message} Nothing was stored.",
            fix=f"{fix} ({exc.fix})" if exc.fix else fix,
            headers={"Retry-After": "30"},
        )
    field = f"{prefix}{exc.field}" if exc.field else (prefix.rstrip(".") or None)
    title = _TITLES.get(exc.code, "Invalid request")
    return Problem(status, exc.code, title, exc.message, field=field, fix=exc.fix)
