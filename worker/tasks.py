"""Celery tasks. Each job task takes a job id only; the job row holds everything else."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from celery import Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import worker_shutting_down

from core import engine, kinds
from core.duties import Duties
from core.queue import TASK_MAINTENANCE, TASK_RECONCILE, TASK_WEBHOOKS
from core.settings import get_settings
from worker.app import celery_app
from worker.cache import ConceptCache
from worker.context import WorkerContext
from worker.runner import RUNNING, SHUTTING_DOWN, abandon_job, run_job

log = logging.getLogger(__name__)


@worker_shutting_down.connect
def _stop_running_jobs(**_: Any) -> None:
    """Warm shutdown (SIGTERM, Ctrl-C): a job running in this process stops at its next step
    and goes back to the queue (worker.runner), instead of holding the shutdown until it ends.
    The event is made before the prefork pool forks, so a child's running job stops at its
    next step as well: a pod told to stop hands its job back within one step."""
    SHUTTING_DOWN.set()


class EngineTask(Task):
    """Holds the expensive state of a worker process: loaded once, shared by its tasks."""

    abstract = True
    _ctx: WorkerContext | None = None
    _base: Any = None
    _concepts: ConceptCache | None = None

    @property
    def ctx(self) -> WorkerContext:
        if EngineTask._ctx is None:
            EngineTask._ctx = WorkerContext.from_settings(get_settings())
        return EngineTask._ctx

    def base(self) -> Any:
        if EngineTask._base is None:
            settings = self.ctx.settings
            log.info("loading base model %s on %s", settings.base_model, settings.device)
            EngineTask._base = engine.load_base_model(settings.base_model, device=settings.device)
        return EngineTask._base

    @property
    def concepts(self) -> ConceptCache:
        if EngineTask._concepts is None:
            EngineTask._concepts = ConceptCache(self.ctx.settings.concept_cache_size)
        return EngineTask._concepts

    def run_job(self, job_id: str) -> str:
        outcome = run_job(self.ctx, uuid.UUID(job_id), self.base, self.concepts)
        log.info("job %s: %s", job_id, outcome)
        return outcome

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """The message is acknowledged anyway (hard time limit: in the parent process, after
        killing the child): end the job here rather than wait for its lease to lapse."""
        job_id = (list(args) or [kwargs.get("job_id")])[0]
        if job_id is None:
            return
        job = uuid.UUID(str(job_id))
        settings = self.ctx.settings
        if isinstance(exc, TimeLimitExceeded):
            # In the pool's parent: the attempt is unknown, so only a run older than the
            # time limit (the one that was killed, not a newer one) is failed.
            kind = kinds.by_task(self.name)
            error = _killed(kind)
            fence: dict[str, Any] = {"running_for": settings.time_limit(kind.name)}
        else:
            error = ("internal_error", f"The worker failed outside the job: {exc!r}")
            attempt = RUNNING.pop(job, None)
            if attempt is None:  # it never started here: nothing of ours to end
                return
            fence = {"attempt": attempt}
        try:
            abandon_job(self.ctx, job, *error, **fence)
        except Exception:  # its lease lapses and the reconciler takes it from there
            log.exception("job %s: could not record the failure", job_id)


def _killed(kind: kinds.Kind) -> tuple[str, str]:
    return (
        "timeout",
        "The job hit the worker's hard time limit and was killed; raise "
        f"{kind.time_limit_variable} or ask for fewer steps.",
    )


# The runner stops a job at its time limit between steps; Celery's limits (prefork pool) are
# the backstop for a job stuck inside one step.
_settings = get_settings()


def _job_task(kind: kinds.Kind) -> EngineTask:
    """The task of one kind of job (core.kinds): it runs the job whose id it is given."""
    limit = _settings.time_limit(kind.name)

    def run(self: EngineTask, job_id: str) -> str:
        return self.run_job(job_id)

    run.__name__ = run.__qualname__ = kind.name
    task = celery_app.task(
        name=kind.task,
        base=EngineTask,
        bind=True,
        soft_time_limit=limit + 60,
        time_limit=limit + 120,
    )(run)
    return task  # type: ignore[no-any-return]


# One task per kind, by kind name.
JOB_TASKS: dict[str, EngineTask] = {kind.name: _job_task(kind) for kind in kinds.ALL}


# The periodic duties (core.duties), sent by `mifo beat` to the control queue.
_duties: Duties | None = None
_duties_lock = threading.Lock()  # the control worker runs tasks on threads


def duties() -> Duties:
    global _duties
    with _duties_lock:
        if _duties is None:
            _duties = Duties.from_settings(get_settings())
        return _duties


# The duties are acknowledged on receipt, in the consumer: beat sends each again on its next
# period, so one lost with its worker is harmless, while an acknowledgement sent late from a
# pool thread on a channel that a broker restart replaced stopped the control worker
# (AttributeError in kombu's Redis transport, seen in the chaos soak).
@celery_app.task(name=TASK_RECONCILE, acks_late=False)
def reconcile() -> dict[str, int]:
    return duties().reconcile()


@celery_app.task(name=TASK_WEBHOOKS, acks_late=False)
def webhooks() -> int:
    return duties().webhooks()


@celery_app.task(name=TASK_MAINTENANCE, acks_late=False)
def maintenance() -> dict[str, int]:
    return duties().maintenance()
