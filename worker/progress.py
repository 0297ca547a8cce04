"""The engine's progress callback: throttled writes to the job row, cooperative cancellation."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import OperationalError

from core import jobs
from core.db import session_scope
from worker.context import WorkerContext

log = logging.getLogger(__name__)

Plan = Sequence[tuple[str, int]]  # the phases of a job, in order, with their step counts


def learn_plan(config: Any) -> Plan:
    """Phases a learning run reports (mifo_engine.learning), so the job's fraction spans all."""
    plan: list[tuple[str, int]] = [("phase1", config.phase1_steps)]
    if config.phase2 and config.phase2_steps > 0:
        if config.prior_preservation:
            plan.append(("prior", config.num_class_images))
        plan.append(("phase2", config.phase2_steps))
    plan.append(("diagnostics", len(config.diagnostic_timesteps)))
    return plan


class ProgressReporter:
    """Called by the engine at every step; returns False once the job should stop.

    Writes reach the database at most once per `settings.progress_interval` seconds (plus the
    last step of each phase), and the cancel flag is read back with each write, so a cancel
    takes effect within about one interval. `fraction` and `eta_seconds` cover the whole job
    when the phases are known in advance (`plan`), the current phase otherwise.
    """

    def __init__(
        self,
        ctx: WorkerContext,
        job_id: uuid.UUID,
        plan: Plan = (),
        clock: Callable[[], float] = time.monotonic,
        attempt: int | None = None,
        deadline: float = math.inf,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.plan = [(name, max(int(n), 0)) for name, n in plan]
        self.clock = clock
        self.started = clock()
        self.last_write = -math.inf
        self.last_webhook = -math.inf
        self.keep_going = True
        self.attempt = attempt
        self.deadline = deadline  # on `clock`; past it the job stops and fails as `timeout`
        self.timed_out = False
        self.stop = stop  # the lease's heartbeat: canceled, taken over or shutting down

    def __call__(self, progress: Any) -> bool:
        now = self.clock()
        if now > self.deadline:
            self.timed_out = True
            return False
        if self.stop():
            return False
        phase, step, total = str(progress.phase), int(progress.step), int(progress.total)
        last_of_phase = total > 0 and step >= total
        if now - self.last_write < self.ctx.settings.progress_interval and not last_of_phase:
            return self.keep_going
        self.last_write = now
        notify = now - self.last_webhook >= self.ctx.settings.webhook_progress_seconds
        if notify:
            self.last_webhook = now
        fraction = self.fraction(phase, step, total)
        elapsed = now - self.started
        eta = elapsed * (1.0 - fraction) / fraction if fraction > 0 else None
        try:
            self._write(phase, step, total, fraction, eta, _losses(progress), notify)
        except OperationalError as exc:  # the run goes on; its lease is the heartbeat's
            log.warning(
                "job %s: progress not recorded (database unavailable): %s", self.job_id, exc
            )
            return self.keep_going
        self.ctx.publisher.publish(self.job_id)
        return self.keep_going

    def _write(
        self,
        phase: str,
        step: int,
        total: int,
        fraction: float,
        eta: float | None,
        losses: dict[str, float],
        notify: bool,
    ) -> None:
        with session_scope(self.ctx.sessions) as session:
            self.keep_going = jobs.record_progress(
                session,
                job_id=self.job_id,
                phase=phase,
                step=step,
                total=total,
                fraction=fraction,
                eta_seconds=eta,
                losses=losses,
                attempt=self.attempt,
                notify=notify,
            )

    def fraction(self, phase: str, step: int, total: int) -> float:
        names = [name for name, _ in self.plan]
        if phase not in names:
            return min(step / total, 1.0) if total > 0 else 0.0
        whole = sum(n for _, n in self.plan)
        if whole == 0:
            return 1.0
        done = sum(n for _, n in self.plan[: names.index(phase)])
        return min((done + min(step, self.plan[names.index(phase)][1])) / whole, 1.0)


def _losses(progress: Any) -> dict[str, float]:
    """The step's loss terms as plain numbers (read from the device only here, once per write);
    a term that is not finite is left out, as JSON has no NaN."""
    terms = getattr(progress, "losses", None) or {}
    values = {str(name): float(value) for name, value in terms.items()}
    return {name: v for name, v in values.items() if math.isfinite(v)}
