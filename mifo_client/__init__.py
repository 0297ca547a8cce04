"""A Python client for the MIFO service: learn concepts, synthesise them, wait for jobs,
download their files, verify webhooks. It needs httpx and pydantic only (no torch, none of
the service's packages), so it installs anywhere: see docs/client.md.

    from mifo_client import Client

    with Client() as client:  # MIFO_API_URL, MIFO_API_KEY
        created = client.learn("scene.png", ["mask0.png", "mask1.png"])
        job = client.wait(created, on_progress=print)
"""

from mifo_client.async_client import AsyncClient
from mifo_client.client import Client
from mifo_client.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GoneError,
    InvalidRequestError,
    JobNotSucceededError,
    MethodNotAllowedError,
    MifoConnectionError,
    MifoError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
    WaitTimeoutError,
)
from mifo_client.models import (
    Concept,
    ConceptCreated,
    ConceptsPage,
    EvaluatedImage,
    Evaluation,
    Image,
    ImageMetrics,
    Job,
    JobError,
    JobResult,
    JobsPage,
    MetricRow,
    Progress,
    Segmentation,
    SegmentCandidate,
    SegmentMask,
    SubjectMetrics,
    Token,
)
from mifo_client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "Concept",
    "ConceptCreated",
    "ConceptsPage",
    "ConflictError",
    "EvaluatedImage",
    "Evaluation",
    "GoneError",
    "Image",
    "ImageMetrics",
    "InvalidRequestError",
    "Job",
    "JobError",
    "JobNotSucceededError",
    "JobResult",
    "JobsPage",
    "MethodNotAllowedError",
    "MetricRow",
    "MifoConnectionError",
    "MifoError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Progress",
    "RateLimitedError",
    "SegmentCandidate",
    "SegmentMask",
    "Segmentation",
    "ServerError",
    "ServiceUnavailableError",
    "SubjectMetrics",
    "Token",
    "UnsupportedMediaTypeError",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "verify_webhook",
]
