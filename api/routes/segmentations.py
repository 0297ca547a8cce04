"""Segmentations: masks from clicks on an image, or the instances SAM finds in it; the
tenant's, not a concept's. Meant for `Prefer: wait`: the masks come in the answer."""

from __future__ import annotations

import functools
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.checks.segmentations import segment_inputs
from api.http.accepted import Accepted, accept, answer, idempotent
from api.http.deps import SessionDep, StateDep, TenantDep
from api.http.idempotency import KeyHeader
from api.http.prefer import WaitDep, finished_response
from api.http.problems import responses
from api.http.state import AppState
from api.present import Presenter
from api.schemas import JobPublic
from core import submissions

router = APIRouter(prefix="/v1/segmentations", tags=["segmentations"])
ERRORS = responses(404, 409, 413, 415, 422, 429, 503)

Form4 = tuple[uuid.UUID | None, str | None, str | None, str | None]
ImageFile = Annotated[
    UploadFile | None,
    File(description="The image: PNG, JPEG or WebP (by content). Send it once; then its id."),
]
ImageIdField = Annotated[
    uuid.UUID | None,
    Form(
        description="Instead of `image`: the `image_id` an earlier segmentation answered "
        "(`result.segmentation.image_id`). Nothing is uploaded, and the worker reuses the "
        "image's embedding: a click costs the mask decoder only."
    ),
]
ModeField = Annotated[
    Literal["prompts", "proposals"] | None,
    Form(
        description="`prompts` (the default): one mask per instance of `prompts`. "
        "`proposals`: the instances SAM finds without prompts, best first."
    ),
]
PromptsField = Annotated[
    str | None,
    Form(
        description="JSON list, one object per instance, in the order of the masks: "
        "`points` ([[x, y], ...] in the image's pixels), `labels` (1 include, 0 exclude, one "
        "per point; all 1 when left out) and/or `box` ([x0, y0, x1, y1] in pixels).",
        examples=['[{"points": [[412, 310], [440, 260]], "labels": [1, 0]}]'],
    ),
]
OptionsField = Annotated[
    str | None,
    Form(
        description="Mode `proposals` only: JSON object of proposal settings (points_per_side, "
        "max_proposals, min_predicted_iou, min_stability, stability_offset, dedupe_iou, "
        "min_area_share).",
        examples=['{"points_per_side": 16, "max_proposals": 8}'],
    ),
]


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses={**ERRORS, **finished_response(JobPublic, "the segmentation")},
)
async def create_segmentation(
    request: Request,
    response: Response,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    wait: WaitDep,
    image: ImageFile = None,
    image_id: ImageIdField = None,
    mode: ModeField = None,
    prompts: PromptsField = None,
    options: OptionsField = None,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Check the prompts against the image and queue a segmentation job (202). With
    `Prefer: wait=N`: 200 with the job as GET /v1/jobs/{id} shows it once it ended, its
    `result.segmentation` holding the `image_id` to send with the next clicks, one mask per
    instance (`url`, `score`, `box`) and the overlay."""
    form: Form4 = (image_id, mode, prompts, options)
    done = await run_in_threadpool(
        _submit, request, response, session, state, tenant, image, form, idempotency_key
    )
    if image is not None:  # stored by now: its temporary file is not kept open
        await image.close()
    finished = Presenter(request, state).job_by_id
    return await answer(request, response, state, session, wait, done, finished)


def _submit(
    request: Request,
    response: Response,
    session: Session,
    state: AppState,
    tenant: uuid.UUID,
    image: UploadFile | None,
    form: Form4,
    idempotency_key: str | None,
) -> Accepted:
    """The submission, in the thread pool: it reads the upload and writes rows and objects."""
    inputs = segment_inputs(session, tenant, state.settings, image, form)
    present = functools.partial(Presenter(request, state).job_by_id, session)
    parts: list[bytes | str] = ["POST /v1/segmentations", inputs.image or b""]
    parts += [str(field or "") for field in form]
    idem = idempotent(session, state, tenant, idempotency_key, present, *parts)
    submit = functools.partial(
        submissions.segment, session, state, tenant_id=tenant, inputs=inputs, attach=idem.attach
    )
    return accept(request, response, idem, submit, present)
