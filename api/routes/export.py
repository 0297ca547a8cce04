"""Concept export: a zip that plain diffusers loads, without this service."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.http.deps import SessionDep, StateDep, TenantDep
from api.http.problems import responses
from core import export

router = APIRouter(prefix="/v1/concepts", tags=["concepts"])

ARCHIVE = {
    "description": "The archive (`Content-Disposition: attachment; "
    'filename="concept-<id>.zip"`): README.md with the loading code, '
    "embeddings/<token>.safetensors (textual inversion, one per token), "
    "pytorch_lora_weights.safetensors (a LoRA fine-tune) or unet.safetensors and "
    "text_encoder.safetensors (a full one), concept.json. The same bytes on every request; "
    "the strong `ETag` is their sha256. Always the whole archive: `Range` is not served.",
    "headers": {
        "ETag": {"description": "the quoted sha256 of the archive", "schema": {"type": "string"}}
    },
    "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
}


@router.get(
    "/{concept_id}/export",
    summary="Export a concept for diffusers",
    response_class=StreamingResponse,
    responses={200: ARCHIVE, **responses(404, 409, 429, 500, 503)},
)
def export_concept(
    concept_id: uuid.UUID, session: SessionDep, state: StateDep, tenant: TenantDep
) -> StreamingResponse:
    """The ready concept as a zip for diffusers' `load_textual_inversion` and
    `load_lora_weights`, with a README naming its tokens, instances and base model.
    409 while the concept is not ready; 503 while this process builds as many as it may."""
    archive = export.concept_archive(
        session, state.storage, concept_id=concept_id, tenant_id=tenant
    )
    headers = {
        "Content-Disposition": f'attachment; filename="concept-{concept_id}.zip"',
        "Content-Length": str(archive.size),
        "ETag": archive.etag,
    }
    return StreamingResponse(archive.chunks(), media_type="application/zip", headers=headers)
