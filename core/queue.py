"""The broker: queue and task names, the Celery app both sides build, and `Broker`, the one
object that sends a job's message or asks how many wait. Importing this module creates
nothing: the API, the workers and the reconciler each build what they need from Settings.

The broker is a doorbell, not the truth: the job row says what must run (core.jobs), and the
reconciler (core.reconcile) rings again for a job whose message may have been lost.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Celery
from kombu import Queue

from core import kinds
from core.settings import Settings


class _NoHostOnDisk(logging.Filter):
    """kombu warns that a URL names no host whenever a connection is set up, so on every
    job sent: the embedded broker (`filesystem://`) and the tests' (`memory://`) have none to
    name, and the network brokers of the settings always name theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No hostname was supplied")


logging.getLogger("kombu.connection").addFilter(_NoHostOnDisk())

# The job tasks and their queues are the rows of core.kinds, one queue per kind.
# Periodic duties (core.duties), sent by celery beat to the small CPU `control` queue.
TASK_RECONCILE = "mifo.reconcile"
TASK_WEBHOOKS = "mifo.webhooks"
TASK_MAINTENANCE = "mifo.maintenance"

BROKER_SOCKET_SECONDS = 5.0
EXPIRES_SECONDS = 10.0
CONTROL = "control"
QUEUES = (*kinds.QUEUES, CONTROL)


def transport_options(settings: Settings, *, sending: bool = False) -> dict[str, object]:
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_folder
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
        }
    # Redis hands an unacknowledged message to another worker after this long. Recovery does
    # not wait for it (a lost worker's lease expires first); such a late copy is skipped.
    options: dict[str, object] = {"visibility_timeout": settings.visibility_timeout}
    if sending:
        # Only for apps that send (the API, the reconciler): a Redis that stops answering
        # fails a send within seconds (503) instead of hanging the request; kombu's own
        # default waits for ever. Consuming workers keep kombu's defaults, whose blocking
        # reads and broadcast subscription are not meant to time out.
        options |= {
            "socket_timeout": BROKER_SOCKET_SECONDS,
            "socket_connect_timeout": BROKER_SOCKET_SECONDS,
            "socket_keepalive": True,
        }
    return options


def prepare_folders(settings: Settings) -> None:
    """The file-system broker's folders (embedded mode), made by the processes that use it."""
    if settings.broker_url.startswith("filesystem://"):
        for sub in ("queue", "control", "processed"):
            (settings.broker_folder / sub).mkdir(parents=True, exist_ok=True)


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """What `mifo beat` sends: each duty on the control queue, expiring after a few periods
    (at least EXPIRES_SECONDS, so clock skew between hosts does not expire every message) so
    that a backlog (no control worker for a while) never runs a duty many times in a row."""
    periods = {
        "reconcile": (TASK_RECONCILE, settings.reconcile_seconds),
        "webhooks": (TASK_WEBHOOKS, settings.webhook_poll_seconds),
        "maintenance": (TASK_MAINTENANCE, settings.maintenance_interval_seconds),
    }
    return {
        name: {
            "task": task,
            "schedule": every,
            "options": {"queue": CONTROL, "expires": max(3 * every, EXPIRES_SECONDS)},
        }
        for name, (task, every) in periods.items()
    }


def create_celery(settings: Settings, *, sending: bool = False) -> Celery:
    app = Celery("mifo", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(name, routing_key=name) for name in QUEUES],
        task_default_queue=kinds.ALL[0].queue,
        task_routes={kind.task: {"queue": kind.queue} for kind in kinds.ALL}
        | {
            TASK_RECONCILE: {"queue": CONTROL},
            TASK_WEBHOOKS: {"queue": CONTROL},
            TASK_MAINTENANCE: {"queue": CONTROL},
        },
        beat_schedule=beat_schedule(settings),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the job row is the result
        task_acks_late=True,  # a message whose worker dies is not lost with it
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one GPU job at a time; others stay with the broker
        broker_transport_options=transport_options(settings, sending=sending),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # A request must not hang on a dead broker: fail fast, answer 503.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        broker_connection_timeout=5,
    )
    return app


class Broker:
    """Sends job messages and reads queue depths through one Celery app."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    @classmethod
    def from_settings(cls, settings: Settings) -> Broker:
        prepare_folders(settings)
        return cls(create_celery(settings, sending=True))

    def send(self, job_id: uuid.UUID, kind: str) -> None:
        """Ring for a job of `kind` (raises what the broker raised, UnknownKind for a kind
        this release does not know)."""
        row = kinds.get(kind)
        self.app.send_task(row.task, args=[str(job_id)], queue=row.queue)

    def check(self) -> None:
        """Raise unless the broker accepts a connection within a few seconds."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

    def depth(self, queue: str) -> int | None:
        """Messages waiting in `queue` (not those a worker holds); None if the broker is down."""
        try:
            with self.app.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
                # Not passive: Redis drops empty lists, and an absent queue is an empty one.
                declared = conn.default_channel.queue_declare(queue=queue, durable=True)
                return int(declared.message_count)
        except Exception:
            return None
