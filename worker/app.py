"""The Celery application. Importing it is cheap (no torch): the API uses it to send tasks."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from core.settings import Settings, get_settings

QUEUES = ("learn", "synthesize", "maintenance")
TASK_LEARN = "mifo.learn"
TASK_SYNTHESIZE = "mifo.synthesize"
TASK_MAINTENANCE = "mifo.maintenance"


def transport_options(settings: Settings) -> dict[str, object]:
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_folder
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
        }
    # Redis: an unacknowledged job comes back only after this long, so it must outlast one.
    return {"visibility_timeout": settings.visibility_timeout}


def create_celery(settings: Settings) -> Celery:
    app = Celery("mifo", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(name, routing_key=name) for name in QUEUES],
        task_default_queue="learn",
        task_routes={
            TASK_LEARN: {"queue": "learn"},
            TASK_SYNTHESIZE: {"queue": "synthesize"},
            TASK_MAINTENANCE: {"queue": "maintenance"},
        },
        # `mifo beat` sends the retention task; any worker on the maintenance queue runs it.
        beat_schedule={
            "maintenance": {
                "task": TASK_MAINTENANCE,
                "schedule": settings.maintenance_interval_seconds,
                "options": {
                    "queue": "maintenance",
                    "expires": settings.maintenance_interval_seconds,
                },
            }
        },
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the job row is the result
        task_acks_late=True,  # a job whose worker dies is delivered again
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one GPU job at a time; others stay with the broker
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # A request must not hang on a dead broker: fail fast, answer 503.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        broker_connection_timeout=5,
    )
    return app


celery_app = create_celery(get_settings())


def check_broker(app: Celery) -> None:
    """Raise unless the broker accepts a connection within a few seconds."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)


def queue_depth(app: Celery, queue: str) -> int | None:
    """Messages waiting in `queue` (not those a worker holds), or None if the broker is down."""
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
            # Not passive: Redis drops empty lists, and an absent queue is an empty one.
            return int(conn.default_channel.queue_declare(queue=queue, durable=True).message_count)
    except Exception:
        return None
