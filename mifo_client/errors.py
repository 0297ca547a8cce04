"""Exceptions: a refused request raises the subclass for its HTTP status, carrying the
problem JSON's fields (RFC 9457: type, title, status, detail, instance, field, fix)."""

from __future__ import annotations

from typing import Any


class MifoError(Exception):
    """A request the service refused, or one that never got an answer (status None)."""

    def __init__(
        self,
        detail: str,
        *,
        type: str | None = None,  # noqa: A002 - the problem JSON's field
        status: int | None = None,
        title: str | None = None,
        instance: str | None = None,
        field: str | None = None,
        fix: str | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail, self.type, self.status, self.title = detail, type, status, title
        self.instance, self.field, self.fix = instance, field, fix
        self.retry_after = retry_after
        self.body = body or {}

    def __str__(self) -> str:
        head = f"{self.status} " if self.status is not None else ""
        text = f"{head}{self.title or 'error'}: {self.detail}"
        if self.field:
            text += f" (field {self.field})"
        if self.fix:
            text += f"; fix: {self.fix}"
        return text


class BadRequestError(MifoError):
    """400"""


class AuthenticationError(MifoError):
    """401: no API key, or an unknown or revoked one."""


class PermissionDeniedError(MifoError):
    """403"""


class NotFoundError(MifoError):
    """404: no such job or concept (or another tenant's), or a job deleted with its concept."""


class MethodNotAllowedError(MifoError):
    """405: the path does not take this method (`Allow` lists the ones it does)."""


class ConflictError(MifoError):
    """409: the request does not fit the current state (e.g. cancelling a finished job)."""


class GoneError(MifoError):
    """410: an expired download link or a deleted file."""


class PayloadTooLargeError(MifoError):
    """413"""


class UnsupportedMediaTypeError(MifoError):
    """415: the body came as another content type than the route reads."""


class InvalidRequestError(MifoError):
    """422: the request is invalid; `field` names the part at fault and `fix` says what to do."""


class RateLimitedError(MifoError):
    """429: too many requests; `retry_after` says how long to wait."""


class ServerError(MifoError):
    """5xx"""


class ServiceUnavailableError(ServerError):
    """503: the service cannot take the request now (nothing was stored); retry later."""


class MifoConnectionError(MifoError):
    """No answer: the connection failed or timed out on every try."""


class WaitTimeoutError(MifoError, TimeoutError):
    """`wait` gave up before the job finished (the job goes on)."""


class JobNotSucceededError(MifoError):
    """`download` of a job that has not succeeded: it has nothing to download."""


BY_STATUS: dict[int, type[MifoError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    410: GoneError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidRequestError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}

# Every problem type the service answers with (its docs: service.md, "Problem types"), and the
# one class raised for it; a test keeps the list equal to the service's own.
BY_TYPE: dict[str, type[MifoError]] = {
    "validation_error": InvalidRequestError,
    "unsupported_media_type": UnsupportedMediaTypeError,
    "malformed_body": BadRequestError,
    "body_too_deep": InvalidRequestError,
    "body_too_large": PayloadTooLargeError,
    "file_too_large": PayloadTooLargeError,
    "method_not_allowed": MethodNotAllowedError,
    "not_found": NotFoundError,
    "http_error": MifoError,
    "invalid_prefer": InvalidRequestError,
    "empty_file": InvalidRequestError,
    "unsupported_format": InvalidRequestError,
    "unsupported_mode": InvalidRequestError,
    "image_too_large": InvalidRequestError,
    "invalid_input": InvalidRequestError,
    "unreadable_image": InvalidRequestError,
    "mask_size_mismatch": InvalidRequestError,
    "masks_overlap": InvalidRequestError,
    "empty_mask": InvalidRequestError,
    "instance_too_small": InvalidRequestError,
    "too_many_instances": InvalidRequestError,
    "invalid_names": InvalidRequestError,
    "forbidden_character": InvalidRequestError,
    "invalid_json": InvalidRequestError,
    "invalid_config": InvalidRequestError,
    "options_too_large": InvalidRequestError,
    "invalid_layout": InvalidRequestError,
    "invalid_prompts": InvalidRequestError,
    "invalid_concept": InvalidRequestError,
    "mifo_error": InvalidRequestError,
    "limit_exceeded": InvalidRequestError,
    "too_many_steps": InvalidRequestError,
    "invalid_webhook_url": InvalidRequestError,
    "invalid_webhook_events": InvalidRequestError,
    "idempotency_key_reused": InvalidRequestError,
    "idempotency_key_in_use": ConflictError,
    "concept_not_ready": ConflictError,
    "base_model_mismatch": ConflictError,
    "job_finished": ConflictError,
    "concurrent_change": ConflictError,
    "artifact_gone": GoneError,
    "link_expired": GoneError,
    "unauthorized": AuthenticationError,
    "rate_limited": RateLimitedError,
    "too_many_active_jobs": RateLimitedError,
    "database_unavailable": ServiceUnavailableError,
    "storage_unavailable": ServiceUnavailableError,
    "broker_unavailable": ServiceUnavailableError,
    "model_unavailable": ServiceUnavailableError,
    "export_busy": ServiceUnavailableError,
    "concept_unreadable": ServerError,
    "internal_error": ServerError,
}


def error_class(status: int, problem_type: str | None = None) -> type[MifoError]:
    """The class for an answer: by its problem type when the service gave a known one, else
    by its status."""
    code = problem_type.rsplit("/", 1)[-1] if problem_type else None
    if code in BY_TYPE:
        return BY_TYPE[code]
    if status in BY_STATUS:
        return BY_STATUS[status]
    return ServerError if status >= 500 else MifoError
