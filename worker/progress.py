"""The engine's progress callback: throttled writes to the job row, cooperative cancellation."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from core import jobs
from core.db import session_scope
from worker.context import WorkerContext


class ProgressReporter:
    """Called by the engine at every step; returns False once the job should stop.

    Writes reach the database at most once per `settings.progress_interval` seconds (plus the
    last step of each phase), and the cancel flag is read back with each write, so a cancel
    takes effect within about one interval.
    """

    def __init__(
        self,
        ctx: WorkerContext,
        job_id: uuid.UUID,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.clock = clock
        self.last_write = -math.inf
        self.keep_going = True
        self.phase_start: dict[str, tuple[float, int]] = {}

    def __call__(self, progress: Any) -> bool:
        now = self.clock()
        phase, step, total = str(progress.phase), int(progress.step), int(progress.total)
        t0, step0 = self.phase_start.setdefault(phase, (now, step))
        last_of_phase = total > 0 and step >= total
        if now - self.last_write < self.ctx.settings.progress_interval and not last_of_phase:
            return self.keep_going
        self.last_write = now
        done = step - step0
        eta = (now - t0) / done * max(total - step, 0) if done > 0 else None
        with session_scope(self.ctx.sessions) as session:
            self.keep_going = jobs.record_progress(
                session,
                job_id=self.job_id,
                phase=phase,
                step=step,
                total=total,
                fraction=min(step / total, 1.0) if total > 0 else 0.0,
                eta_seconds=eta,
            )
        self.ctx.publisher.publish(self.job_id)
        return self.keep_going
