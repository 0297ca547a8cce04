"""Syntheses: a prompt with one box per learned token, against a ready concept."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import dispatch, submit
from api.costs import SYNTHESIS_CAPS, check_costs
from api.deps import SessionDep, StateDep, TenantDep
from api.idempotency import Idempotency, KeyHeader, fingerprint
from api.present import Presenter
from api.problems import PROBLEM_RESPONSE, Problem, from_engine, not_found
from api.schemas import JobPublic, SynthesisCreate
from core import jobs
from core.db import retry_conflicts
from core.models import Concept, Job
from core.settings import Settings
from mifo_engine.config import SynthesisConfig
from mifo_engine.errors import MifoError

router = APIRouter(prefix="/v1/concepts/{concept_id}/syntheses", tags=["syntheses"])
ERRORS: dict[int | str, dict[str, Any]] = {
    404: PROBLEM_RESPONSE,
    409: PROBLEM_RESPONSE,
    413: PROBLEM_RESPONSE,
    422: PROBLEM_RESPONSE,
    429: PROBLEM_RESPONSE,
    503: PROBLEM_RESPONSE,
}
FIELDS = ("num_images", "seed", "steps", "guidance_scale", "box_control")


@router.post("", status_code=202, response_model=JobPublic, responses=ERRORS)
def create_synthesis(
    concept_id: uuid.UUID,
    body: SynthesisCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    state: StateDep,
    tenant: TenantDep,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Validate the prompt and boxes against the concept and queue a synthesis job (202).

    Box keys may be tokens (`<asset0>`) or the instance names given at learning time."""
    settings = state.settings
    _limits(body, settings)
    state.check_base_model()  # 503 model_unavailable: a job would only fail
    config = _config(body)  # 422 before any lookup
    hook_url, hook_events = submit.webhook(
        body.webhook_url, list(body.webhook_events or []) or None, settings
    )
    concept = session.get(Concept, concept_id)
    if concept is None or concept.tenant_id != tenant:
        raise not_found("concept", concept_id)
    if concept.status != "ready" or concept.meta is None:
        raise Problem(
            409, "concept_not_ready", "Concept not ready",
            f"Concept {concept_id} is {concept.status}; it must be ready to synthesise.",
            field="concept_id", status_of_concept=concept.status,
            fix="wait for its learning job to succeed (GET /v1/jobs/{id}), or learn it again",
        )  # fmt: skip
    from mifo_engine.layout import validate_synthesis_request

    try:
        layout = validate_synthesis_request(
            concept.meta, body.prompt, body.boxes, tokenizer=state.tokenizer()
        )
    except MifoError as exc:
        raise from_engine(exc) from exc
    present = Presenter(request, state)
    idem = Idempotency.begin(
        session, tenant_id=tenant, key=idempotency_key, ttl=settings.idempotency_seconds,
        fingerprint=fingerprint("POST", request.url.path, body.model_dump_json()),
        render=lambda job_id: present.job(session.get(Job, job_id)),  # type: ignore[arg-type]
    )  # fmt: skip
    if idem.replay is not None:
        return idem.replay
    def accept() -> Job:
        with state.creating_job():
            submit.check_capacity(session, tenant, settings)
            _keep_concept(session, concept_id, tenant)
            params = {
                "prompt": layout.prompt,
                "boxes": {s.token: list(s.box) for s in layout.subjects},
                "config": _values(body),  # only what the client set: engine defaults fill the rest
                "seeds": config.image_seeds(),
            }
            try:
                job = jobs.create_job(
                    session,
                    tenant_id=tenant,
                    kind="synthesize",
                    concept_id=concept_id,
                    params=params,
                    webhook_url=hook_url,
                    webhook_events=hook_events,
                )
                idem.attach(job.id, 202)
                session.commit()
            except IntegrityError as exc:  # the concept was deleted after all (SQLite: no lock)
                session.rollback()
                if session.scalar(select(Concept.id).where(Concept.id == concept_id)) is None:
                    raise not_found("concept", concept_id) from exc
                raise
        return job

    try:
        job = retry_conflicts(session, accept)
        try:
            dispatch.send(state, session, job.id, "synthesize")
        except Exception as exc:  # the broker is down: forget the job, say so
            session.delete(job)
            session.commit()
            raise submit.unavailable("broker", exc) from exc
        out = present.job(session.get(Job, job.id) or job)
    except BaseException:
        idem.abandon()
        raise
    location = request.app.url_path_for("get_job", job_id=str(job.id))
    response.headers["Location"] = location
    idem.complete(out, {"Location": location})
    return out


def _keep_concept(session: Session, concept_id: uuid.UUID, tenant: uuid.UUID) -> None:
    """404 when the concept was deleted since it was read; on PostgreSQL, a share lock keeps
    it until the job is committed (a concurrent DELETE waits, then cancels the new job)."""
    kept = session.scalar(
        select(Concept.id)
        .where(Concept.id == concept_id, Concept.tenant_id == tenant)
        .with_for_update(read=True)
    )
    if kept is None:
        raise not_found("concept", concept_id)


def _limits(body: SynthesisCreate, settings: Settings) -> None:
    for field, value, limit, env in (
        ("prompt", len(body.prompt), settings.max_prompt_chars, "MIFO_MAX_PROMPT_CHARS"),
        ("num_images", body.num_images, settings.max_images_per_synthesis,
         "MIFO_MAX_IMAGES_PER_SYNTHESIS"),
        ("steps", body.steps, settings.max_synthesis_steps, "MIFO_MAX_SYNTHESIS_STEPS"),
    ):  # fmt: skip
        if value > limit:
            what = "characters" if field == "prompt" else ""
            raise Problem(
                422, "limit_exceeded", "Over a server limit",
                f"{field} is {value} {what}; this server allows at most {limit}.".replace("  ", " "),
                field=field, fix=f"ask for at most {limit} ({env} on the server)",
            )  # fmt: skip


def _config(body: SynthesisCreate) -> SynthesisConfig:
    clash = sorted(set(body.options) & set(FIELDS))
    if clash:
        raise Problem(
            422, "invalid_config", "Invalid option", f"options repeats {clash[0]}.",
            field=f"options.{clash[0]}", fix=f"set {clash[0]} at the top level of the body",
        )  # fmt: skip
    try:
        config = SynthesisConfig.from_mapping(_values(body))
    except MifoError as exc:
        prefix = "" if exc.field in FIELDS else "options."
        raise from_engine(exc, prefix=prefix) from exc
    check_costs(config, SYNTHESIS_CAPS)
    return config


def _values(body: SynthesisCreate) -> dict[str, object]:
    return {**body.options, **{f: getattr(body, f) for f in FIELDS}}
