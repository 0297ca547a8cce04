"""Artifact downloads: a redirect to a presigned URL (S3) or the file itself (local storage).

Links come with jobs and concepts and carry an expiry and an HMAC signature, so they work
without an API key (a browser, curl) and only for as long as MIFO_PRESIGN_SECONDS."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, RedirectResponse, Response

from api.http.deps import SessionDep, StateDep
from api.http.problems import PROBLEM_RESPONSE
from core.auth import link_valid
from core.models import Artifact
from core.problems import Problem, not_found

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])
# Links are only ever given out, never listed: the one way to a working link.
LINK_FIX = (
    "use a link exactly as a job or concept gave it; GET /v1/jobs/{id} or /v1/concepts/{id} "
    "gives fresh ones"
)


@router.get(
    "/{artifact_id}",
    response_class=Response,
    responses={
        200: {"description": "The file.", "content": {"image/png": {}}},
        307: {"description": "Redirect to a presigned S3 URL."},
        404: PROBLEM_RESPONSE,
        410: PROBLEM_RESPONSE,
    },
)
def download_artifact(
    artifact_id: uuid.UUID,
    session: SessionDep,
    state: StateDep,
    expires: Annotated[int, Query(description="Unix time the link stops working.")],
    signature: Annotated[str, Query(max_length=100, description="From the link as given.")],
) -> Response:
    """Download an input, attention map, image or preview with a link from a job or concept."""
    if not link_valid(state.link_key, artifact_id, expires, signature):
        raise not_found("artifact", artifact_id, LINK_FIX)  # as for a missing artifact
    if expires < time.time():
        raise _expired()
    artifact = session.get(Artifact, artifact_id)
    if artifact is None:
        raise not_found("artifact", artifact_id, LINK_FIX)
    url = state.storage.presigned_url(artifact.key)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    path = state.storage.local_path(artifact.key)
    if path is None or not path.is_file():
        raise _gone(artifact_id)
    # Named by its job, as the client and `mifo remote` name it: a browser saving images of
    # two jobs into one folder keeps both.
    name = f"{artifact.job_id}_{path.name}" if artifact.job_id else path.name
    return FileResponse(path, media_type=artifact.content_type, filename=name)


def _gone(artifact_id: uuid.UUID) -> Problem:
    detail = f"The file of artifact {artifact_id} is missing."
    return Problem("artifact_gone", detail, fix="produce it again")


def _expired() -> Problem:
    fix = "read the job or concept again for fresh links"
    detail = "This download link has expired."
    return Problem("link_expired", detail, field="expires", fix=fix)
