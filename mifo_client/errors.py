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


class ConflictError(MifoError):
    """409: the request does not fit the current state (e.g. cancelling a finished job)."""


class GoneError(MifoError):
    """410: an expired download link or a deleted file."""


class PayloadTooLargeError(MifoError):
    """413"""


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
    409: ConflictError,
    410: GoneError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def error_class(status: int) -> type[MifoError]:
    if status in BY_STATUS:
        return BY_STATUS[status]
    return ServerError if status >= 500 else MifoError
