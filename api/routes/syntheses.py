"""Syntheses: a prompt with one box per learned token, against a ready concept."""

from __future__ import annotations

import functools
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.costs import SYNTHESIS_CAPS, check_costs
from api.deps import SessionDep, StateDep, TenantDep
from api.idempotency import KeyHeader
from api.prefer import WaitDep, finished_response
from api.present import Presenter
from api.problems import responses
from api.routes.jobs import jobs_page
from api.schemas import JobPublic, JobsPublic, SynthesisCreate
from api.state import AppState
from api.submission import Accepted, accept, answer, idempotent
from core import submissions
from core.engine import MifoError, SynthesisConfig, validate_synthesis_request
from core.models import Concept, Job
from core.problems import Problem, from_engine, not_found
from core.settings import Settings

router = APIRouter(prefix="/v1/concepts/{concept_id}/syntheses", tags=["syntheses"])
ERRORS = responses(404, 409, 413, 422, 429, 503)
FIELDS = ("num_images", "seed", "steps", "guidance_scale", "box_control")


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses={**ERRORS, **responses(415), **finished_response(JobPublic, "the job")},
)
async def create_synthesis(
    concept_id: uuid.UUID,
    body: SynthesisCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    wait: WaitDep,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Validate the prompt and boxes against the concept and queue a synthesis job (202).

    Box keys may be tokens (`<asset0>`) or the instance names given at learning time. With
    `Prefer: wait=N`: 200 with the job as GET /v1/jobs/{id} shows it once it ended within N
    seconds."""
    done = await run_in_threadpool(
        _submit, concept_id, body, request, response, session, state, tenant, idempotency_key
    )
    finished = Presenter(request, state).job_by_id
    return await answer(request, response, state, session, wait, done, finished)


def _submit(
    concept_id: uuid.UUID,
    body: SynthesisCreate,
    request: Request,
    response: Response,
    session: Session,
    state: AppState,
    tenant: uuid.UUID,
    idempotency_key: str | None,
) -> Accepted:
    """The submission, in the thread pool: it reads the concept and writes the job."""
    settings = state.settings
    _limits(body, settings)
    config = _config(body)  # 422 before any lookup
    state.check_base_model()  # 503 model_unavailable: a job would only fail
    events: list[str] | None = list(body.webhook_events or []) or None
    hook = submissions.webhook(body.webhook_url, events, settings)
    concept = submissions.ready_concept(session, concept_id, tenant, settings.base_model)
    params = _params(body, config, concept, state)
    present = functools.partial(Presenter(request, state).job_by_id, session)
    parts = ("POST", request.url.path, body.model_dump_json())
    idem = idempotent(session, state, tenant, idempotency_key, present, *parts)
    submit = functools.partial(
        submissions.synthesize,
        session,
        state,
        tenant_id=tenant,
        concept_id=concept_id,
        params=params,
        hook=hook,
        attach=idem.attach,
    )
    return accept(request, response, idem, submit, present)


@router.get("", response_model=JobsPublic, responses=responses(404, 422))
def list_syntheses(
    concept_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> JobsPublic:
    """The concept's synthesis jobs, newest first (the concept's `links.syntheses`)."""
    concept = session.get(Concept, concept_id)
    if concept is None or concept.tenant_id != tenant:
        raise not_found("concept", concept_id)
    where = [Job.tenant_id == tenant, Job.concept_id == concept_id, Job.kind == "synthesize"]
    return jobs_page(request, session, state, where, limit, offset)


def _params(
    body: SynthesisCreate, config: SynthesisConfig, concept: Concept, state: AppState
) -> dict[str, Any]:
    """What the worker needs: the prompt and boxes as the engine checked them against the
    concept, the options the client set (engine defaults fill the rest) and the seeds."""
    try:
        layout = validate_synthesis_request(
            concept.meta or {}, body.prompt, body.boxes, tokenizer=state.tokenizer()
        )
    except MifoError as exc:
        raise from_engine(exc) from exc
    return {
        "prompt": layout.prompt,
        "boxes": {s.token: list(s.box) for s in layout.subjects},
        "config": _values(body),
        "seeds": config.image_seeds(),
    }


def _limits(body: SynthesisCreate, settings: Settings) -> None:
    for field, value, limit, env in (
        ("prompt", len(body.prompt), settings.max_prompt_chars, "MIFO_MAX_PROMPT_CHARS"),
        (
            "num_images",
            body.num_images,
            settings.max_images_per_synthesis,
            "MIFO_MAX_IMAGES_PER_SYNTHESIS",
        ),
        ("steps", body.steps, settings.max_synthesis_steps, "MIFO_MAX_SYNTHESIS_STEPS"),
    ):
        if value > limit:
            what = " characters" if field == "prompt" else ""
            raise Problem(
                "limit_exceeded",
                f"{field} is {value}{what}; this server allows at most {limit}.",
                field=field,
                fix=f"ask for at most {limit} ({env} on the server)",
            )


def _config(body: SynthesisCreate) -> SynthesisConfig:
    clash = sorted(set(body.options) & set(FIELDS))
    if clash:
        raise Problem(
            "invalid_config",
            f"options repeats {clash[0]}.",
            field=f"options.{clash[0]}",
            fix=f"set {clash[0]} at the top level of the body",
        )
    try:
        config = SynthesisConfig.from_mapping(_values(body))
    except MifoError as exc:
        prefix = "" if exc.field in FIELDS else "options."
        raise from_engine(exc, prefix=prefix) from exc
    check_costs(config, SYNTHESIS_CAPS)
    return config


def _values(body: SynthesisCreate) -> dict[str, object]:
    return {**body.options, **{f: getattr(body, f) for f in FIELDS}}
