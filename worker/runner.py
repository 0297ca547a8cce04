"""What a task does: load the job, call the engine, store artifacts, record the outcome."""

from __future__ import annotations

import logging
import multiprocessing
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery.exceptions import Reject, SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core import cleanup, concepts, engine, jobs, kinds
from core.db import session_scope
from core.engine import Canceled, LearnConfig, MifoError, ModelLoadError, SynthesisConfig
from core.models import Artifact, Concept, Job
from core.storage import StorageError
from worker import evaluation, segmentation
from worker.cache import ConceptCache
from worker.context import WorkerContext
from worker.progress import Plan, ProgressReporter, learn_plan
from worker.threads import cpu_threads

log = logging.getLogger(__name__)

CONTENT_TYPES = {".png": "image/png", ".json": "application/json"}
RECORD_RETRY_SECONDS = 1.0

# Set when this worker begins a warm shutdown (worker.tasks): a running job stops at its next
# step and is put back in the queue for another worker, or this one after a restart. Made
# before the prefork pool forks, so its children see the main process set it.
SHUTTING_DOWN = multiprocessing.get_context("fork").Event()

# The attempt each job runs as in this process, for a failure reported outside the runner
# (worker.tasks.EngineTask.on_failure) to fence on.
RUNNING: dict[uuid.UUID, int] = {}


class Heartbeat:
    """Renews the lease of one running attempt every MIFO_HEARTBEAT_SECONDS, on its own
    thread, whatever the job is doing (loading the model, a long step), and learns from the
    renewal whether the job must stop: canceled, taken over (the lease lapsed and the job was
    re-queued), or this process shutting down. The engine hears it at its next step."""

    def __init__(self, ctx: WorkerContext, job_id: uuid.UUID, attempt: int) -> None:
        self.ctx, self.job_id, self.attempt = ctx, job_id, attempt
        self.canceled = self.superseded = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"lease-{job_id}")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def should_stop(self) -> bool:
        return self.canceled or self.superseded or SHUTTING_DOWN.is_set()

    def beat(self) -> None:
        settings = self.ctx.settings
        with session_scope(self.ctx.sessions) as session:
            lease = jobs.renew(
                session,
                job_id=self.job_id,
                attempt=self.attempt,
                lease_seconds=settings.lease_seconds,
            )
        self.superseded = self.superseded or not lease.owned
        self.canceled = self.canceled or lease.cancel_requested

    def _run(self) -> None:
        while not self._done.wait(self.ctx.settings.heartbeat_seconds):
            try:
                self.beat()
            except Exception as exc:  # the lease may lapse: then the job is re-queued
                log.warning("job %s: lease not renewed: %s", self.job_id, exc)


@dataclass
class Claimed:
    """The parts of a started job the engine call needs (read in one short transaction)."""

    job_id: uuid.UUID
    kind: str
    params: dict[str, Any]
    concept_id: uuid.UUID | None  # None: a tenant's job (core.kinds.TENANT), no concept
    names: list[str]
    prefix: str | None  # the concept's
    concept_files: str | None  # where the learned concept is (synthesis jobs read it)
    attempt: int  # fencing token: writes of an older attempt are ignored
    deadline: float  # time.monotonic() past which the job fails as `timeout`

    @property
    def output(self) -> str:
        """The job's output: emptied when an attempt starts, removed after a failure."""
        return jobs.output_prefix(self.kind, self.prefix, self.job_id, self.params)

    @property
    def files(self) -> str:
        """Where this attempt writes, inside `output`."""
        return jobs.attempt_prefix(self.output, self.attempt)


class TimedOut(Exception):
    """The job ran past its kind's time limit (MIFO_LEARN_TIME_LIMIT, ...)."""


class Superseded(Exception):
    """A redelivery took the job over: this attempt must not write anything more."""


@dataclass
class Produced:
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] | None = None
    written: list[str] = field(default_factory=list)  # storage prefixes to remove on failure


def run_job(
    ctx: WorkerContext, job_id: uuid.UUID, load_base: Callable[[], Any], concepts: ConceptCache
) -> str:
    """Run one job to a terminal state and return it ("skipped" when it must not run).

    `load_base` returns the process's base model (loaded on first call): a model that cannot
    be loaded fails the job with `model_unavailable` instead of leaving it queued.

    A lost database connection is not the job's fault: a job that could not be claimed stays
    queued (the reconciler sends it again), and an outcome that could not be recorded is
    retried while the lease holds.
    """
    if SHUTTING_DOWN.is_set():  # a message taken during a warm shutdown goes straight back
        raise Reject("worker shutting down", requeue=True)
    try:
        claimed = _claim(ctx, job_id)
    except OperationalError as exc:
        # The job stays queued and this message is acknowledged: the reconciler sends it
        # again once the database answers (a message handed back at once would only spin).
        log.error("job %s: database unavailable; left queued for the reconciler: %s", job_id, exc)
        return "skipped"
    ctx.publisher.publish(job_id)
    if isinstance(claimed, jobs.Refused):  # ended by `start`: a previous attempt's files go
        _remove(ctx, job_id, [claimed.output] if claimed.output else [])
        return "skipped"
    if claimed is None:
        return "skipped"

    RUNNING[claimed.job_id] = claimed.attempt  # kept when an error escapes, for on_failure
    with Heartbeat(ctx, claimed.job_id, claimed.attempt) as heartbeat:
        outcome = _run(ctx, claimed, heartbeat, load_base, concepts)
    RUNNING.pop(claimed.job_id, None)
    ctx.publisher.publish(job_id)
    return outcome


def _run(
    ctx: WorkerContext,
    claimed: Claimed,
    heartbeat: Heartbeat,
    load_base: Callable[[], Any],
    concepts: ConceptCache,
) -> str:
    job_id = claimed.job_id
    produced = Produced(written=[claimed.output])
    limit = ctx.settings.time_limit(claimed.kind)
    try:
        # Earlier attempts may have died half-way through their uploads; never a newer one's.
        _remove_earlier(ctx, claimed)
        base = None if claimed.kind in OWN_MODEL else _load(load_base)
        if heartbeat.should_stop():  # asked while the model loaded
            raise Canceled("stopped before the first step")
        if base is not None and base.device.type == "cpu":
            threads = engine.use_cpu_threads(base, cpu_threads(ctx.settings.cpu_threads))
            log.info("job %s: %d CPU thread(s)", job_id, threads)
        RUNNERS[kinds.get(claimed.kind).name](
            Work(ctx, claimed, base, produced, heartbeat, concepts)
        )
        if time.monotonic() > claimed.deadline:
            raise TimedOut
        outcome = _recorded(ctx, claimed, "succeeded", produced=produced)
    except Reject:
        raise
    except Superseded:  # the newer attempt owns the job: remove this attempt's own folder
        return _superseded(ctx, claimed)
    except Canceled:
        if time.monotonic() > claimed.deadline:
            outcome = _record(ctx, claimed, "failed", error=_timeout(claimed.kind, limit))
        elif heartbeat.superseded:
            return _superseded(ctx, claimed)
        elif SHUTTING_DOWN.is_set() and not heartbeat.canceled and _release(ctx, claimed):
            raise Reject("worker shutting down", requeue=True) from None
        else:
            outcome = _record(ctx, claimed, "canceled")
    except (TimedOut, SoftTimeLimitExceeded):
        outcome = _record(ctx, claimed, "failed", error=_timeout(claimed.kind, limit))
    except MifoError as exc:
        outcome = _record(ctx, claimed, "failed", error=(exc.code, str(exc)))
    except OperationalError as exc:  # not the job's fault, and nothing can be recorded now
        log.error("job %s: database unavailable; left to its lease: %s", job_id, exc)
        return "interrupted"  # the lease lapses and the job runs again as a new attempt
    except StorageError as exc:
        log.error("job %s: storage failed: %s", job_id, exc)
        outcome = _record(ctx, claimed, "failed", error=("storage_error", str(exc)))
    except Exception as exc:  # recorded on the job; the traceback goes to the worker log only
        log.exception("job %s failed", job_id)
        outcome = _record(ctx, claimed, "failed", error=("internal_error", repr(exc)))
    if outcome == "superseded":  # the database refused this attempt's outcome
        return _superseded(ctx, claimed)
    if outcome in ("failed", "canceled"):
        _remove(ctx, job_id, produced.written)  # nothing half-written stays behind
    return outcome


def _remove_earlier(ctx: WorkerContext, claimed: Claimed) -> None:
    cleanup.remove_superseded(ctx.storage, claimed.output, live=None, newest=claimed.attempt - 1)


def _superseded(ctx: WorkerContext, claimed: Claimed) -> str:
    log.warning(
        "job %s: attempt %d no longer owns the job (its lease lapsed and the job moved on); "
        "stopped, its files removed",
        claimed.job_id,
        claimed.attempt,
    )
    _remove(ctx, claimed.job_id, [claimed.files])
    return "superseded"


def _release(ctx: WorkerContext, claimed: Claimed) -> bool:
    """This worker is shutting down: the job goes back to the queue (the caller gives its
    message back to the broker) and the next worker runs it from the start. False when a
    cancel came first: then it ends as canceled."""
    with session_scope(ctx.sessions) as session:
        released = jobs.release(session, job_id=claimed.job_id, attempt=claimed.attempt)
    if released:
        _remove(ctx, claimed.job_id, [claimed.files])
        ctx.publisher.publish(claimed.job_id)
        log.warning("job %s: worker shutting down; job queued again", claimed.job_id)
    return released


def abandon_job(
    ctx: WorkerContext,
    job_id: uuid.UUID,
    error_type: str,
    message: str,
    *,
    attempt: int | None = None,
    running_for: float | None = None,
) -> bool:
    """Fail a job whose task died outside the runner (hard time limit, an escaped error) and
    remove its output; False when the job had already ended or was taken over. Fenced as
    core.jobs.abandon: by the attempt that failed, or by how long it has been running."""
    with session_scope(ctx.sessions) as session:
        output = jobs.job_output(session, job_id)
        done = jobs.abandon(
            session,
            job_id=job_id,
            error_type=error_type,
            message=message,
            attempt=attempt,
            running_for=running_for,
        )
    if done:
        _remove(ctx, job_id, [output] if output else [])
        ctx.publisher.publish(job_id)
    return done


def _remove(ctx: WorkerContext, job_id: uuid.UUID, prefixes: list[str]) -> None:
    for prefix in prefixes:  # no artifact row points there; maintenance retries a failure
        cleanup.remove(ctx.storage, ctx.sessions, prefix, f"the output of job {job_id}")


def _load(load_base: Callable[[], Any]) -> Any:
    """The base model; any failure to load it is `model_unavailable`, with the reason."""
    try:
        return load_base()
    except MifoError:
        raise
    except Exception as exc:
        log.exception("base model could not be loaded")
        raise ModelLoadError(f"The base model could not be loaded: {exc!r}") from exc


def _recorded(ctx: WorkerContext, job: Claimed, status: str, **kw: Any) -> str:
    """`_record`, tried again while the heartbeat can still hold the lease (half of it), so
    that a short database outage at the end does not throw the finished work away."""
    deadline = time.monotonic() + ctx.settings.lease_seconds / 2
    while True:
        try:
            return _record(ctx, job, status, **kw)
        except OperationalError as exc:
            if time.monotonic() > deadline:
                raise  # the lease lapses and the reconciler queues the job again
            log.error("job %s: database unavailable while recording, retrying: %s", job.job_id, exc)
            time.sleep(RECORD_RETRY_SECONDS)


def _timeout(kind: str, limit: float) -> tuple[str, str]:
    """The error of a job of `kind` stopped at its time limit of `limit` seconds."""
    return "timeout", (
        f"The job ran longer than its time limit of {limit:g} s and was stopped; raise "
        f"{kinds.get(kind).time_limit_variable} or ask for fewer steps."
    )


def _claim(ctx: WorkerContext, job_id: uuid.UUID) -> Claimed | jobs.Refused | None:
    with session_scope(ctx.sessions) as session:
        job = jobs.start(session, job_id=job_id, lease_seconds=ctx.settings.lease_seconds)
        if job is None or isinstance(job, jobs.Refused):
            return job
        concept = session.get(Concept, job.concept_id) if job.concept_id else None
        tenants = kinds.get(job.kind).scope == kinds.TENANT  # no concept to have
        if concept is None and not tenants:  # deleted after the job was queued
            jobs.finish(session, job_id=job_id, status="canceled")
            return None
        deadline = time.monotonic() + ctx.settings.time_limit(job.kind)
        return Claimed(
            job.id,
            job.kind,
            dict(job.params),
            concept.id if concept else None,
            list(concept.names) if concept else [],
            concept.prefix if concept else None,
            concept.files_prefix if concept else None,
            job.attempts,
            deadline,
        )


@dataclass(frozen=True)
class Work:
    """What a runner gets: the claimed job, the loaded base model, where to put what it
    produced, the heartbeat its progress reporter asks whether to stop, the concept cache."""

    ctx: WorkerContext
    job: Claimed
    base: Any
    out: Produced
    heartbeat: Heartbeat
    concepts: ConceptCache

    def concept(self) -> Any:
        """The job's learned concept, loaded (kept loaded in the process's concept cache)."""
        job = self.job
        assert job.concept_id is not None and job.concept_files is not None, job.kind
        return self.concepts.get(job.concept_id, self.ctx.storage, job.concept_files)

    def progress(self, plan: Plan = ()) -> ProgressReporter:
        """The engine's progress callback for this attempt (`plan`: its phases, if known)."""
        job = self.job
        return ProgressReporter(
            self.ctx,
            job.job_id,
            plan,
            attempt=job.attempt,
            deadline=job.deadline,
            stop=self.heartbeat.should_stop,
        )


def _learn(work: Work) -> None:
    ctx, job, out = work.ctx, work.job, work.out
    storage = ctx.storage
    image = storage.get(f"{job.prefix}inputs/image.png")
    masks = [storage.get(key) for key in storage.keys(f"{job.prefix}inputs/masks/")]
    config = LearnConfig.from_mapping(job.params.get("options", {}))
    learned = engine.learn(
        work.base,
        image=image,
        masks=masks,
        names=job.names,
        config=config,
        progress=work.progress(learn_plan(config)),
    )
    out.meta = learned.metadata()
    target = job.files
    with tempfile.TemporaryDirectory(prefix="mifo-learn-") as tmp:
        learned.save(Path(tmp) / "concept")
        sizes = _upload(ctx, job, Path(tmp) / "concept", target)
    maps = out.meta.get("files", {}).get("attention_maps", {})
    for position, (token, rel) in enumerate(maps.items()):
        key = target + rel
        out.artifacts.append(
            dict(kind="attention", position=position, label=token, key=key, size=sizes[key])
        )
    out.result = {"concept_id": str(job.concept_id)}


def _synthesize(work: Work) -> None:
    ctx, job, out = work.ctx, work.job, work.out
    concept = work.concept()
    made = engine.synthesize(
        work.base,
        concept,
        prompt=job.params["prompt"],
        boxes={token: tuple(box) for token, box in job.params["boxes"].items()},
        config=SynthesisConfig.from_mapping(job.params["config"]),
        progress=work.progress(),
    )
    target = job.files
    with tempfile.TemporaryDirectory(prefix="mifo-synth-") as tmp:
        made.save(tmp)
        sizes = _upload(ctx, job, Path(tmp), target)
    for i in range(len(made.images)):
        for kind in ("image", "preview"):
            key = f"{target}{kind}_{i:02d}.png"
            if key in sizes:
                out.artifacts.append(dict(kind=kind, position=i, key=key, size=sizes[key]))
    out.result = {
        "images": [
            {"index": i, "seed": int(seed), "in_box_share": shares}
            for i, (seed, shares) in enumerate(zip(made.seeds, made.in_box_share, strict=True))
        ]
    }
    if job.params.get("evaluate"):  # each image's quality metrics
        inputs = evaluation.stored_inputs(concept, ctx.storage, job.prefix)
        metrics = evaluation.score(made, concept, ctx.settings, work.base.device, inputs)
        for image, scores in zip(out.result["images"], metrics, strict=True):
            image["metrics"] = scores


def _evaluate(work: Work) -> None:
    ctx, job, out = work.ctx, work.job, work.out
    concept = work.concept()
    inputs = evaluation.stored_inputs(concept, ctx.storage, job.prefix)
    result = evaluation.run(work.base, concept, job.params, ctx.settings, work.progress(), inputs)
    with tempfile.TemporaryDirectory(prefix="mifo-evaluate-") as tmp:
        result.save(Path(tmp) / "evaluation")
        sizes = _upload(ctx, job, Path(tmp) / "evaluation", job.files)
    out.artifacts += evaluation.artifacts(result, job.files, sizes)
    out.result = evaluation.record(result)


def _segment(work: Work) -> None:
    ctx, job, out = work.ctx, work.job, work.out
    made = segmentation.run(ctx, job.params, stop=work.heartbeat.should_stop)
    with tempfile.TemporaryDirectory(prefix="mifo-segment-") as tmp:
        made.save(Path(tmp))
        sizes = _upload(ctx, job, Path(tmp), job.files)
    out.artifacts += made.artifacts(job.files, sizes)
    out.result = made.record()


# What a worker does with a claimed job, by its kind (core.kinds; every kind has one:
# tests/test_kinds.py). A runner calls the engine, uploads under `job.files` and fills `out`.
RUNNERS: dict[str, Callable[[Work], None]] = {
    kinds.LEARN.name: _learn,
    kinds.SYNTHESIZE.name: _synthesize,
    kinds.EVALUATE.name: _evaluate,
    kinds.SEGMENT.name: _segment,
}
# Kinds whose runner brings its own model (worker.segmentation: SAM), not the base model.
OWN_MODEL = frozenset({kinds.SEGMENT.name})


def _upload(ctx: WorkerContext, job: Claimed, folder: Path, prefix: str) -> dict[str, int]:
    """Store every file of `folder` under `prefix`, while this attempt still owns the job.

    An attempt that outlived its delivery (the broker handed the job to another worker) stops
    before its next write instead of overwriting the newer attempt's files.
    """
    sizes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with session_scope(ctx.sessions) as session:
            if not jobs.is_current(session, job_id=job.job_id, attempt=job.attempt):
                raise Superseded
        key = prefix + path.relative_to(folder).as_posix()
        data = path.read_bytes()
        ctx.storage.put(key, data, CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
        sizes[key] = len(data)
    return sizes


def _record(
    ctx: WorkerContext,
    job: Claimed,
    status: str,
    *,
    produced: Produced | None = None,
    error: tuple[str, str] | None = None,
) -> str:
    """Write the terminal state; a cancel or a concept delete that came first wins over success."""
    with session_scope(ctx.sessions) as session:
        # Locks the concept row (PostgreSQL) so a concurrent delete waits for this transaction.
        concept = (
            session.get(Concept, job.concept_id, with_for_update=True) if job.concept_id else None
        )
        owned = concept is not None or job.concept_id is None  # a tenant's job has none
        succeeded = (
            status == "succeeded"
            and owned
            and produced is not None
            and jobs.finish(
                session,
                job_id=job.job_id,
                status="succeeded",
                result=produced.result,
                attempt=job.attempt,
            )
        )
        if succeeded:
            assert produced is not None
            for values in produced.artifacts:
                session.add(Artifact(concept_id=job.concept_id, job_id=job.job_id, **values))
            if kinds.get(job.kind).makes_concept:
                assert concept is not None and produced.meta is not None
                if not concepts.ready(session, concept.id, meta=produced.meta, files=job.files):
                    log.warning("job %s: its concept was no longer pending", job.job_id)
            return "succeeded"
        if status == "succeeded":
            status = "canceled"
        error_type, message = error or (None, None)
        ended = jobs.finish(
            session,
            job_id=job.job_id,
            status=status,
            error_type=error_type,
            error_message=message,
            attempt=job.attempt,
        )
        if not ended:
            return _refused_as(session, job)
        concepts.settle(session, job.job_id, status)
        return status


def _refused_as(session: Session, job: Claimed) -> str:
    """Why the outcome was refused: this attempt's own success, committed by a try whose
    answer was lost (the commit went through, the connection did not), or the job moved on
    without it (taken over, or ended meanwhile): then it is superseded."""
    row = session.get(Job, job.job_id, populate_existing=True)
    if row is not None and row.status == "succeeded" and row.attempts == job.attempt:
        return "succeeded"
    return "superseded"
