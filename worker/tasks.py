"""Celery tasks. Each takes a job id only; the job row holds everything else."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task

from core.settings import get_settings
from worker.app import TASK_LEARN, TASK_SYNTHESIZE, celery_app
from worker.cache import ConceptCache
from worker.context import WorkerContext
from worker.runner import run_job

log = logging.getLogger(__name__)


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
            from mifo_engine.models import load_base_model

            settings = self.ctx.settings
            log.info("loading base model %s on %s", settings.base_model, settings.device)
            EngineTask._base = load_base_model(settings.base_model, device=settings.device)
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


@celery_app.task(name=TASK_LEARN, base=EngineTask, bind=True)
def learn(self: EngineTask, job_id: str) -> str:
    return self.run_job(job_id)


@celery_app.task(name=TASK_SYNTHESIZE, base=EngineTask, bind=True)
def synthesize(self: EngineTask, job_id: str) -> str:
    return self.run_job(job_id)
