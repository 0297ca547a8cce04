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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from core.db import engine_from_settings, make_sessionmaker
from core.queue import Broker
from core.reconcile import reconcile
from core.retention import run_maintenance
from core.settings import Settings
from core.storage import Storage, storage_from_settings
from core.webhooks import dispatch_due, http_client

log = logging.getLogger(__name__)

WEBHOOK_PASS_SECONDS = 10.0
JOIN_SECONDS = 1.0


@dataclass
class Duties:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    broker: Broker
    _delivering: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

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
        """Deliver what is due, until nothing is or WEBHOOK_PASS_SECONDS have passed. One pass
        at a time per process: slow receivers never take every control thread, so the
        reconciler always gets one."""
        if not self._delivering.acquire(blocking=False):
            return 0
        try:
            deadline = time.monotonic() + WEBHOOK_PASS_SECONDS
            total = 0
            with http_client(self.settings) as http:
                while time.monotonic() < deadline:
                    sent = dispatch_due(self.sessions, self.settings, http)
                    total += sent
                    if not sent:
                        break
            return total
        finally:
            self._delivering.release()

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
        deadline = time.monotonic() + JOIN_SECONDS  # daemon threads: a late one dies with us
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


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
