"""Problems (RFC 9457): what went wrong, the field at fault and the fix, with the HTTP
status it answers. Raised by the services in core and by the routes; api/http/problems.py
renders them as problem JSON."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from core.engine import MifoError, ModelLoadError

log = logging.getLogger(__name__)

# Stable problem types as URI references relative to the API (RFC 9457, 3.1.1): no outside
# domain is implied; clients compare them as strings.
PROBLEM_BASE = "/problems/"
MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True)
class ProblemType:
    """One kind of refusal: its `type` (PROBLEM_BASE + code), HTTP status (None: the status of
    the HTTP error it reports), title, and what the user should do about it in general (each
    problem's own `fix` says it for the case at hand)."""

    code: str
    status: int | None
    title: str
    action: str


# Every problem type the API answers with: raises name a code here; docs/service.md renders
# this table (tests/test_docs.py) and the client maps each code to one exception class.
# fmt: off
TYPES: tuple[ProblemType, ...] = (
    # The request's form and size.
    ProblemType("validation_error", 422, "Request validation failed", "correct the named field (the OpenAPI schema at /docs lists each)"),
    ProblemType("unsupported_media_type", 415, "Unsupported content type", "send the content type the route reads: JSON or multipart/form-data"),
    ProblemType("malformed_body", 400, "Malformed body", "send well-formed JSON or multipart"),
    ProblemType("body_too_deep", 422, "Body nested too deep", "flatten the JSON body"),
    ProblemType("body_too_large", 413, "Request too large", "send a smaller body"),
    ProblemType("file_too_large", 413, "File too large", "send a smaller file (MIFO_MAX_UPLOAD_BYTES)"),
    ProblemType("method_not_allowed", 405, "Method not allowed", "use a method the Allow header names"),
    ProblemType("not_found", 404, "Not found", "check the id or the path"),
    ProblemType("http_error", None, "HTTP error", "follow the detail"),
    ProblemType("invalid_prefer", 422, "Invalid Prefer header", "send Prefer: wait=N with N in the allowed range"),
    # Uploads: images, masks, names and options.
    ProblemType("empty_file", 422, "Empty file", "send the file's content"),
    ProblemType("unsupported_format", 422, "Unsupported or unreadable image", "send PNG, JPEG or WEBP"),
    ProblemType("unsupported_mode", 422, "Unsupported colour mode", "convert the image to RGB, RGBA or greyscale"),
    ProblemType("image_too_large", 422, "Image has too many pixels", "send a smaller image (MIFO_MAX_IMAGE_PIXELS)"),
    ProblemType("invalid_input", 422, "Invalid input image or mask", "fix the named image or mask"),
    ProblemType("unreadable_image", 422, "Unreadable image", "send a valid image file"),
    ProblemType("mask_size_mismatch", 422, "Mask size does not match the image", "send masks of the image's size"),
    ProblemType("empty_mask", 422, "Empty mask", "paint the instance white on black"),
    ProblemType("masks_overlap", 422, "Masks overlap", "give each instance a mask of its own"),
    ProblemType("instance_too_small", 422, "Instance too small", "paint a larger region"),
    ProblemType("too_many_instances", 422, "Too many instances", "send fewer masks (MIFO_MAX_INSTANCES)"),
    ProblemType("invalid_names", 422, "Names do not match the masks", "send one name per mask"),
    ProblemType("forbidden_character", 422, "Forbidden character in a name", "remove the character"),
    ProblemType("invalid_json", 422, "Invalid JSON", "send a JSON object"),
    ProblemType("invalid_config", 422, "Invalid option", "fix the named option (docs/configuration.md)"),
    ProblemType("options_too_large", 422, "Options too large or too deep", "send fewer or flatter options"),
    ProblemType("invalid_layout", 422, "Invalid prompt or box layout", "fix the prompt or the named box"),
    ProblemType("invalid_prompts", 422, "Invalid segmentation prompts", "give points and boxes inside the image, in its pixels"),
    ProblemType("invalid_concept", 422, "Invalid concept", "learn the concept again"),
    ProblemType("mifo_error", 422, "Invalid request", "follow the fix"),
    ProblemType("limit_exceeded", 422, "Over a server limit", "stay within the named limit"),
    ProblemType("too_many_steps", 422, "Too many steps", "ask for fewer steps"),
    # Webhooks and idempotency.
    ProblemType("invalid_webhook_url", 422, "Webhook URL refused", "give a public https URL"),
    ProblemType("invalid_webhook_events", 422, "Invalid webhook events", "name events of started, progress, completed, with a webhook_url"),
    ProblemType("idempotency_key_reused", 422, "Idempotency-Key used for another request", "use a new key for a new request"),
    ProblemType("idempotency_key_in_use", 409, "Request in progress", "retry after the first request with this key answered"),
    # The state of what the request names.
    ProblemType("concept_not_ready", 409, "Concept not ready", "wait for the learning job to succeed"),
    ProblemType("base_model_mismatch", 409, "Concept learned on another base model", "synthesise on a server with the concept's base model"),
    ProblemType("job_finished", 409, "Job already finished", "nothing to cancel"),
    ProblemType("concurrent_change", 409, "A concurrent change collided with this request", "retry the request"),
    ProblemType("artifact_gone", 410, "Artifact gone", "produce it again"),
    ProblemType("link_expired", 410, "Download link expired", "fetch the job again for fresh links"),
    # Who asks, and how often.
    ProblemType("unauthorized", 401, "Missing or invalid credentials", "send a valid key or token"),
    ProblemType("rate_limited", 429, "Too many requests", "wait for Retry-After and slow down"),
    ProblemType("too_many_active_jobs", 429, "Too many active jobs", "wait for a job to finish (MIFO_MAX_ACTIVE_JOBS)"),
    # The server's side.
    ProblemType("database_unavailable", 503, "The database is unavailable", "retry after Retry-After"),
    ProblemType("storage_unavailable", 503, "The storage is unavailable", "retry after Retry-After"),
    ProblemType("broker_unavailable", 503, "The broker is unavailable", "retry after Retry-After"),
    ProblemType("model_unavailable", 503, "The base model is unavailable", "retry later; the operator must fix MIFO_BASE_MODEL"),
    ProblemType("export_busy", 503, "Too many exports at once", "retry after Retry-After"),
    ProblemType("concept_unreadable", 500, "Stored concept unreadable", "report it; learn the concept again"),
    ProblemType("internal_error", 500, "Internal error", "retry later; report the time of the request"),
)
# fmt: on
CATALOGUE: dict[str, ProblemType] = {t.code: t for t in TYPES}


class Problem(Exception):
    """A refusal with the fields a client needs to fix its request; its type, status and
    title come from the catalogue (`status` only for a type whose status varies)."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        fix: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        kind = CATALOGUE[code]  # a KeyError here is a programming error: add the type
        if (status is None) == (kind.status is None):
            raise ValueError(f"problem type {code}: give a status exactly when it varies")
        self.status: int = kind.status if kind.status is not None else status  # type: ignore[assignment]
        self.code, self.title, self.detail = code, kind.title, detail
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


def not_found(what: str, ident: object, fix: str | None = None) -> Problem:
    return Problem(
        "not_found",
        f"No {what} with id {ident}.",
        fix=fix or f"check the id; list {what}s with GET /v1/{what}s",
    )


def unavailable(what: str, exc: Exception) -> Problem:
    """The request failed on a dependency (`what`: storage, broker): nothing was stored."""
    return Problem(
        f"{what}_unavailable",
        f"The request was not accepted because the {what} failed: {exc}",
        fix="retry later; nothing was stored",
        headers={"Retry-After": "30"},
    )


def from_engine(exc: MifoError, *, prefix: str = "") -> Problem:
    """An engine rejection as a 4xx problem; `prefix` places the field inside the request.

    A base model the server cannot load is the server's problem, not the request's: 503."""
    if isinstance(exc, ModelLoadError):
        log.error("base model unavailable: %s", exc)
        fix = "retry later; the operator must fix MIFO_BASE_MODEL"
        return Problem(
            exc.code,
            f"The server could not load its base model: {exc.message} Nothing was stored.",
            fix=f"{fix} ({exc.fix})" if exc.fix else fix,
            headers={"Retry-After": "30"},
        )
    field = f"{prefix}{exc.field}" if exc.field else (prefix.rstrip(".") or None)
    return Problem(exc.code, exc.message, field=field, fix=exc.fix)
