"""verify_webhook accepts what the service signs (core/webhooks.py) and nothing else."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from core.webhooks import sign
from mifo_client import WebhookVerificationError, verify_webhook

SECRET = "whsec_" + base64.b64encode(b"a webhook key of 24 bytes").decode()
BODY = json.dumps({"type": "job.completed", "data": {"id": "j1", "status": "succeeded"}}).encode()


def _headers(body: bytes = BODY, stamp: int | None = None, secret: str = SECRET) -> dict:
    stamp = int(time.time()) if stamp is None else stamp
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, "msg_1", stamp, body),
    }


def test_a_webhook_the_service_signed_verifies_and_returns_the_event() -> None:
    event = verify_webhook(SECRET, _headers(), BODY)
    assert event["type"] == "job.completed" and event["data"]["id"] == "j1"
    assert verify_webhook(SECRET, _headers(), BODY.decode())["type"] == "job.completed"
    capitalised = httpx.Headers({k.title(): v for k, v in _headers().items()})
    assert verify_webhook(SECRET, capitalised, BODY)["data"]["status"] == "succeeded"


def test_one_good_signature_among_several_is_enough() -> None:
    headers = _headers()
    other = sign("whsec_" + base64.b64encode(b"old key").decode(), "msg_1", 1, BODY)
    headers["webhook-signature"] = f"{other} v2,whatever {headers['webhook-signature']}"
    assert verify_webhook(SECRET, headers, BODY)["type"] == "job.completed"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: {**h, "webhook-id": "msg_2"}, "bad signature"),
        (lambda h: {**h, "webhook-signature": "v1,AAAA"}, "bad signature"),
        (lambda h: {k: v for k, v in h.items() if k != "webhook-signature"}, "missing header"),
        (lambda h: {**h, "webhook-timestamp": "soon"}, "not a number"),
    ],
)
def test_altered_headers_are_refused(change, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WebhookVerificationError, match=message):
        verify_webhook(SECRET, change(_headers()), BODY)


def test_an_altered_body_or_another_secret_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="bad signature"):
        verify_webhook(SECRET, _headers(), BODY + b" ")
    other = "whsec_" + base64.b64encode(b"another key").decode()
    with pytest.raises(WebhookVerificationError, match="bad signature"):
        verify_webhook(other, _headers(), BODY)
    assert issubclass(WebhookVerificationError, ValueError)


def test_a_timestamp_outside_the_tolerance_is_refused() -> None:
    old = int(time.time()) - 301
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(SECRET, _headers(stamp=old), BODY)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(SECRET, _headers(stamp=int(time.time()) + 400), BODY)
    assert verify_webhook(SECRET, _headers(stamp=old), BODY, tolerance=600)
