"""What every job-creating POST checks: the webhook target and the tenant's active jobs."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from api.problems import Problem
from core import jobs
from core.models import Tenant
from core.settings import Settings
from core.webhooks import EVENTS, UnsafeTarget, check_url


def webhook(
    url: str | None, events: list[str] | None, settings: Settings
) -> tuple[str | None, list[str] | None]:
    """Validate `webhook_url` (public address unless allowed) and the event filter."""
    if events is not None:
        bad = [e for e in events if e not in EVENTS]
        if bad or not events:
            raise Problem(
                422, "invalid_webhook_events", "Unknown webhook event",
                f"webhook_events has {bad[0] if bad else 'nothing'}.", field="webhook_events",
                fix=f"choose among {', '.join(EVENTS)} (leave it out for all of them)",
            )  # fmt: skip
        if url is None:
            raise Problem(
                422, "invalid_webhook_events", "Events without a webhook",
                "webhook_events was given without webhook_url.", field="webhook_url",
                fix="give webhook_url too, or drop webhook_events",
            )  # fmt: skip
    if url is None:
        return None, None
    if len(url) > 2000:
        raise Problem(
            422, "invalid_webhook_url", "Webhook URL too long", "webhook_url exceeds 2000 "
            "characters.", field="webhook_url", fix="use a shorter URL",
        )  # fmt: skip
    try:
        check_url(url, settings.webhook_allowed_networks)
    except UnsafeTarget as exc:
        raise Problem(
            422, "invalid_webhook_url", "Webhook URL refused", f"webhook_url: {exc}.",
            field="webhook_url", fix="give a public http(s) URL (MIFO_WEBHOOK_ALLOWED_NETWORKS "
            "lists private networks the server may call)",
        ) from exc  # fmt: skip
    return url, list(dict.fromkeys(events)) if events else None


def check_capacity(session: Session, tenant_id: uuid.UUID, settings: Settings) -> None:
    """429 when the tenant already has MIFO_MAX_ACTIVE_JOBS queued or running jobs.

    The tenant row is locked (PostgreSQL) until the caller commits, so that concurrent
    requests of one tenant count one after the other. It is the first lock of every route that
    takes several (tenant, then concept, then job), and a NO KEY UPDATE one: the foreign-key
    checks of rows written meanwhile (jobs, webhook deliveries) do not wait for it."""
    lock_tenant(session, tenant_id)
    active = jobs.count_active(session, tenant_id=tenant_id)
    if active >= settings.max_active_jobs:
        raise Problem(
            429, "too_many_active_jobs", "Too many active jobs",
            f"This tenant has {active} queued or running jobs; the limit is "
            f"{settings.max_active_jobs}.", field="tenant",
            fix="wait for a job to finish or cancel one (MIFO_MAX_ACTIVE_JOBS on the server)",
            headers={"Retry-After": "10"},
        )  # fmt: skip


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> None:
    session.get(Tenant, tenant_id, with_for_update={"key_share": True})


def unavailable(what: str, exc: Exception) -> Problem:
    return Problem(
        503, f"{what}_unavailable", f"The {what} is unavailable",
        f"The request was not accepted because the {what} failed: {exc}",
        fix="retry later; nothing was stored", headers={"Retry-After": "30"},
    )  # fmt: skip
