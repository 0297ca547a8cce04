"""Verify a webhook the service sent (Standard Webhooks): HMAC-SHA256 over
"{webhook-id}.{webhook-timestamp}.{body}" with the tenant's secret (base64 after "whsec_"),
sent as "webhook-signature: v1,<base64>" (several signatures may be sent, space-separated)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any


class WebhookVerificationError(ValueError):
    """The webhook is not from the service, was altered, or is too old (a replay)."""


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def verify_webhook(
    secret: str, headers: Mapping[str, str], body: bytes | str, tolerance: float = 300
) -> dict[str, Any]:
    """The event (parsed JSON body) when the signature is right and the timestamp within
    `tolerance` seconds of now; else WebhookVerificationError.

    Pass the raw body exactly as received. `webhook-id` is the same on every delivery
    attempt of one event: deduplicate on it."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        sent_at = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    if abs(time.time() - sent_at) > tolerance:
        raise WebhookVerificationError("timestamp outside the tolerance")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise WebhookVerificationError("the secret is not whsec_<base64>") from None
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256).digest()
    expected = base64.b64encode(mac)
    sent = [s[3:].encode() for s in signatures.split() if s.startswith("v1,")]
    # Every candidate is compared, in constant time each.
    if not any([hmac.compare_digest(expected, s) for s in sent]):
        raise WebhookVerificationError("bad signature")
    try:
        event: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    return event
