"""Artifact downloads: a redirect to a presigned URL (S3) or the file itself (local storage)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from api.deps import SessionDep, StorageDep
from api.problems import PROBLEM_RESPONSE, Problem, not_found
from core.models import Artifact

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get(
    "/{artifact_id}",
    response_class=Response,
    responses={
        200: {"description": "The file.", "content": {"image/png": {}}},
        307: {"description": "Redirect to a presigned S3 URL."},
        404: PROBLEM_RESPONSE,
    },
)
def download_artifact(artifact_id: uuid.UUID, session: SessionDep, storage: StorageDep) -> Response:
    """Download an input, attention map, image or preview by its id (links come with jobs and
    concepts)."""
    artifact = session.get(Artifact, artifact_id)
    if artifact is None:
        raise not_found("artifact", artifact_id)
    url = storage.presigned_url(artifact.key)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    path = storage.local_path(artifact.key)
    if path is None or not path.is_file():
        raise Problem(
            410, "artifact_gone", "Artifact gone", f"The file of artifact {artifact_id} is missing.",
            fix="produce it again (re-run the job)",
        )  # fmt: skip
    return FileResponse(path, media_type=artifact.content_type, filename=path.name)
