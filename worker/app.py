"""The workers' Celery application. Names, routes and the beat schedule live in core.queue,
which the API uses to send messages without importing this module."""

from __future__ import annotations

from core.queue import create_celery
from core.settings import get_settings

celery_app = create_celery(get_settings())
