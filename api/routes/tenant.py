"""The caller's tenant: the secret its webhooks are signed with."""

from __future__ import annotations

from fastapi import APIRouter

from api.http.deps import SessionDep, TenantDep
from api.http.problems import PROBLEM_RESPONSE
from api.schemas import WebhookSecret
from core.models import Tenant

router = APIRouter(prefix="/v1/webhook-secret", tags=["webhooks"])


@router.get("", response_model=WebhookSecret, responses={404: PROBLEM_RESPONSE})
def webhook_secret(session: SessionDep, tenant: TenantDep) -> WebhookSecret:
    """The key that signs this tenant's webhooks (verify `webhook-signature` with it)."""
    row = session.get(Tenant, tenant)
    assert row is not None  # keys are deleted with their tenant
    return WebhookSecret(secret=row.webhook_secret)
