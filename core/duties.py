"""The service's periodic duties, each with one home.

| duty        | what                                                   | period (setting)                |
|-------------|--------------------------------------------------------|---------------------------------|
| reconcile   | lapsed leases, unsent and lost messages (core.reconcile) | MIFO_RECONCILE_SECONDS          |
| webhooks    | due webhook deliveries (core.webhooks)                 | MIFO_WEBHOOK_POLL_SECONDS       |
| maintenance | retention, expired idempotency keys, storage clean-ups | MIFO_MAINTENANCE_INTERVAL_SECONDS |

Production: `mifo beat` (exactly one) sends each as a task to the `control` queue, served by
a small CPU worker (`mifo worker --queues control`). Embedded (`mifo serve`): `InProcess`
runs the same functions on threads of the serving process. API processes run none of them;
they keep only what is theirs alone (api/main.py): their job-status cache and API-key cache.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from core.db import engine_from_settings, make_sessionmaker
from core.queue import Broker
from core.reconcile import reconcile
from core.retention import run_maintenance
from core.settings import Settings
from core.storage import Storage, storage_from_settings
from core.webhooks import dispatch_due, http_client

log = logging.getLogger(__name__)


@dataclass
class Duties:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    broker: Broker

    @classmethod
    def from_settings(cls, settings: Settings) -> Duties:
        return cls(
            settings=settings,
            sessions=make_sessionmaker(engine_from_settings(settings)),
            storage=storage_from_settings(settings),
            broker=Broker.from_settings(settings),
        )

    def reconcile(self) -> dict[str, int]:
        return reconcile(self.sessions, self.storage, self.settings, self.broker)

    def webhooks(self) -> int:
        """Deliver what is due, until nothing is (at most ~20 per call)."""
        with http_client(self.settings) as http:
            sent = total = dispatch_due(self.sessions, self.settings, http)
            while sent:
                sent = dispatch_due(self.sessions, self.settings, http)
                total += sent
        return total

    def maintenance(self) -> dict[str, int]:
        done = run_maintenance(self.sessions, self.storage, self.settings)
        if any(done.values()):
            log.info("maintenance: %s", done)
        return done

    def schedule(self) -> list[tuple[str, float, Callable[[], object]]]:
        s = self.settings
        return [
            ("reconcile", s.reconcile_seconds, self.reconcile),
            ("webhooks", s.webhook_poll_seconds, self.webhooks),
            ("maintenance", s.maintenance_interval_seconds, self.maintenance),
        ]


@contextlib.contextmanager
def in_process(duties: Duties) -> Iterator[None]:
    """Run every duty on its own daemon thread (first at once, then each period) until the
    block ends. A failing pass (the database down...) is logged, and the next one runs."""
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_every, args=(name, every, work, stop), daemon=True, name=f"mifo-{name}"
        )
        for name, every, work in duties.schedule()
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)


def _every(name: str, seconds: float, work: Callable[[], object], stop: threading.Event) -> None:
    failing = False
    while not stop.is_set():
        try:
            work()
            if failing:
                log.info("%s runs again", name)
            failing = False
        except Exception as exc:
            if not failing:  # once per outage, not once per pass
                log.warning("%s failed, retrying every %g s: %s", name, seconds, exc)
            failing = True
        stop.wait(seconds)
