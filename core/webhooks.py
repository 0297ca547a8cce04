"""Webhooks: an outbox of job events, signed the Standard Webhooks way, sent with retries.

A job change and its delivery row are written in one transaction (`emit`), so an accepted
event survives any crash. Senders (the webhook duty, core/duties.py: `dispatch_due`) lease due rows
with a conditional UPDATE, so two processes never send the same attempt. Each attempt is a
row; after `webhook_max_attempts` failures the delivery is `failed`.

Signature: HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}" with the tenant's
secret (base64 after "whsec_"), sent as "webhook-signature: v1,<base64>".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core import clock
from core.models import Job, Tenant, WebhookAttempt, WebhookDelivery, utcnow
from core.problems import Problem
from core.settings import Settings

log = logging.getLogger(__name__)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

EVENTS = ("started", "progress", "completed")


class UnsafeTarget(ValueError):
    """The webhook URL is malformed or points at a private, loopback or link-local address."""


class Unresolvable(UnsafeTarget):
    """The webhook host did not resolve (perhaps for a while only: DNS can fail and recover).

    A job is refused with such a URL; a delivery tries again later."""


# IPv6 forms that carry an IPv4 address: the IPv4 part decides whether the target is public.
# NAT64: the well-known prefix and the local-use one (RFC 8215), whose /48 holds the /96
# prefixes of local translators; DNS64 puts the IPv4 address in the last 32 bits of either.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def check_url(url: str, allowed: list[str]) -> IPAddress:
    """The address to send to; UnsafeTarget unless every address the host resolves to is
    public (or in an allowed network)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("use an absolute http:// or https:// URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeTarget(f"the port is not a number from 0 to 65535: {exc}") from exc
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:  # socket.gaierror: no answer now; perhaps one later
        raise Unresolvable(f"the host {parts.hostname!r} does not resolve: {exc}") from exc
    except ValueError as exc:  # a name that cannot be encoded (IDNA): no answer ever
        raise UnsafeTarget(f"the host {parts.hostname!r} is not a valid name: {exc}") from exc
    networks = [ipaddress.ip_network(n, strict=False) for n in allowed]
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        if any(address in net for net in networks):
            continue
        if not _public(address):
            raise UnsafeTarget(
                f"{parts.hostname} resolves to {address}, a private, loopback or link-local "
                "address; webhooks go to public addresses only"
            )
    if not addresses:
        raise Unresolvable(f"the host {parts.hostname!r} has no address")
    return addresses[0]


def _public(address: IPAddress) -> bool:
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and any(address in net for net in (*_NAT64, _IPV4_COMPATIBLE)):
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            return _public(inner)
    return True


def pinned_request(url: str, address: IPAddress) -> tuple[str, dict[str, str], dict[str, Any]]:
    """URL, headers and request extensions that reach `address` while naming the original host.

    The connection goes to the address that was checked (no second DNS lookup that could
    answer differently); the Host header and the TLS server name stay the URL's host.
    """
    parts = urlsplit(url)
    host = f"[{address}]" if address.version == 6 else str(address)
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    target = urlunsplit(parts._replace(netloc=netloc))
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return target, {"host": host_header or ""}, extensions


def http_client(settings: Settings) -> Any:
    """The sender's HTTP client: no redirects (a 3xx is a failed attempt, never followed to
    an unchecked address); certificates checked against certifi's CAs, or the bundle named
    by SSL_CERT_FILE / SSL_CERT_DIR for receivers with a private CA."""
    import httpx

    return httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "kind": job.kind,
        "status": job.status,
        "concept_id": str(job.concept_id) if job.concept_id else None,
        "attempts": job.attempts,
        "progress": {
            "phase": job.phase,
            "step": job.step,
            "total": job.total,
            "fraction": job.fraction,
            "losses": job.progress_losses or None,
        },
        "error": {"type": job.error_type, "message": job.error_message} if job.error_type else None,
        "links": {"self": f"/v1/jobs/{job.id}"},
    }


def emit(session: Session, job_id: uuid.UUID, event: str) -> bool:
    """Queue `event` for the job's webhook, if it has one and subscribed to it."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or not job.webhook_url or event not in (job.webhook_events or EVENTS):
        return False
    session.add(
        WebhookDelivery(
            job_id=job.id,
            tenant_id=job.tenant_id,
            event=f"job.{event}",
            url=job.webhook_url,
            next_attempt_at=clock.now(session),  # due at once, on the database's clock
            payload={
                "type": f"job.{event}",
                "timestamp": utcnow().isoformat(),
                "data": job_summary(job),
            },
        )
    )
    return True


def _lease(session: Session, settings: Settings, limit: int) -> list[uuid.UUID]:
    now = clock.now(session)  # one clock for emitters and senders on every host
    due = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    until = clock.after(session, settings.webhook_timeout_seconds * 3 + 5)
    leased = []
    for delivery_id, when in due:
        won = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.next_attempt_at == when)
            .values(next_attempt_at=until),
            execution_options={"synchronize_session": False},
        ).rowcount  # type: ignore[attr-defined]
        if won:
            leased.append(delivery_id)
    session.commit()
    return leased


def _send(http: Any, settings: Settings, delivery: WebhookDelivery, secret: str) -> tuple:
    """One attempt: (status code or None, error or None, ms, retry?)."""
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    stamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "mifo-webhooks/1",
        "webhook-id": str(delivery.id),
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, str(delivery.id), stamp, body),
    }
    t0 = time.perf_counter()
    try:
        address = check_url(delivery.url, settings.webhook_allowed_networks)  # DNS may change
    except Unresolvable as exc:  # DNS may be down for a while: try again with the backoff
        return None, f"unresolved: {exc}", (time.perf_counter() - t0) * 1000, True
    except UnsafeTarget as exc:
        return None, f"refused: {exc}", 0.0, False
    target, host, extensions = pinned_request(delivery.url, address)
    try:
        r = http.post(target, content=body, headers={**headers, **host}, extensions=extensions)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}", (time.perf_counter() - t0) * 1000, True
    ms = (time.perf_counter() - t0) * 1000
    if 200 <= r.status_code < 300:
        return r.status_code, None, ms, False
    return r.status_code, f"HTTP {r.status_code}", ms, True


def dispatch_due(sessions: sessionmaker[Session], settings: Settings, http: Any) -> int:
    """Send every due delivery once; return how many attempts were made."""
    with sessions() as session:
        leased = _lease(session, settings, limit=20)
    for delivery_id in leased:
        with sessions() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            tenant = session.get(Tenant, delivery.tenant_id) if delivery else None
            if delivery is None or tenant is None:
                continue
            code, error, ms, retry = _send(http, settings, delivery, tenant.webhook_secret)
            delivery.attempts += 1
            session.add(
                WebhookAttempt(
                    delivery_id=delivery.id,
                    number=delivery.attempts,
                    status_code=code,
                    error=error,
                    duration_ms=ms,
                )
            )
            if error is None:
                delivery.status = "delivered"
            elif retry and delivery.attempts < settings.webhook_max_attempts:
                wait = settings.webhook_backoff_seconds * 2 ** (delivery.attempts - 1)
                delivery.next_attempt_at = clock.after(session, wait)
            else:
                delivery.status = "failed"
                log.warning("webhook %s for job %s failed: %s", delivery.id, delivery.job_id, error)
            session.commit()
    return len(leased)


@dataclass(frozen=True)
class Hook:
    """A job's webhook: where its events go and which (None: all)."""

    url: str | None = None
    events: list[str] | None = None


def requested_hook(url: str | None, events: list[str] | None, settings: Settings) -> Hook:
    """Validate `webhook_url` (a public address unless allowed) and the event filter."""
    if events is not None:
        bad = [e for e in events if e not in EVENTS]
        if bad or not events:
            raise Problem(
                "invalid_webhook_events",
                f"webhook_events has {bad[0] if bad else 'nothing'}.",
                field="webhook_events",
                fix=f"choose among {', '.join(EVENTS)} (leave it out for all of them)",
            )
        if url is None:
            raise Problem(
                "invalid_webhook_events",
                "webhook_events was given without webhook_url.",
                field="webhook_url",
                fix="give webhook_url too, or drop webhook_events",
            )
    if url is None:
        return Hook()
    if len(url) > 2000:
        raise Problem(
            "invalid_webhook_url",
            "webhook_url exceeds 2000 characters.",
            field="webhook_url",
            fix="use a shorter URL",
        )
    try:
        check_url(url, settings.webhook_allowed_networks)
    except UnsafeTarget as exc:
        raise Problem(
            "invalid_webhook_url",
            f"webhook_url: {exc}.",
            field="webhook_url",
            fix="give a public http(s) URL (MIFO_WEBHOOK_ALLOWED_NETWORKS lists private "
            "networks the server may call)",
        ) from exc
    return Hook(url, list(dict.fromkeys(events)) if events else None)
