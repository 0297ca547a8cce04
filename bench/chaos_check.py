"""The chaos soak's checker (bench/chaos.py), in the spirit of Jepsen's total-queue checker:
what the clients were told against what the database and the bucket hold once the service
has healed and drained.

Read from PostgreSQL directly and from the bucket with boto3 (never through the API, whose
caches could hide a fault), it finds:

- lost: a job id some client was given that has no row, or whose row is not terminal;
- unexpected: a job row no client was given;
- duplicated results: a job with more than one `job.completed` event, more than one
  distinct `webhook-id` received for its completion, or artifacts of two attempts;
- orphans: objects under `concepts/` that nothing references (see `_orphans`);
- missing artifacts: an artifact row without its object, a succeeded job without its files;
- over attempts: more starts than MIFO_MAX_ATTEMPTS without failing as `worker_lost`;
- paused/skewed failed: a job that ran on a worker that was only paused or had its clock
  moved, and failed for any reason but `worker_lost` (a pause past the lease is a lost run, as
  a hung worker's is: the lease cannot tell them apart, and MIFO_MAX_ATTEMPTS is what stops a
  job that hangs its worker every time; so is a warm restart that outlasts its grace);
- cancels not kept: a job whose cancel was answered `canceled` and ended otherwise;
- webhooks missing: a terminal job subscribed to `completed` whose event never arrived;
- idempotency: a POST repeated with its Idempotency-Key that answered another job.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("succeeded", "failed", "canceled")
ATTEMPT = re.compile(r"^concepts/([^/]+)/syntheses/([^/]+)/attempt-(\d+)/")


@dataclass
class Receipt:
    """One webhook delivery as the receiver saw it."""

    at: float
    webhook_id: str
    event: str
    job_id: str
    status: str | None


@dataclass
class Evidence:
    """What the harness saw: every id a client was given, and what happened around it."""

    accepted: dict[str, float]  # job id -> seconds since the start when first answered
    idempotency: list[dict[str, Any]]  # repeated POSTs: key, first id, repeated ids
    cancels: list[dict[str, Any]]  # job, HTTP code, the status the answer showed
    receipts: list[Receipt]
    timelines: dict[str, list[tuple[float, str, int]]]  # job -> (t, status, attempts) changes
    faults: list[Any]  # bench.chaos_faults.Fault
    skewed_jobs: dict[str, str]  # job started on a clock-skewed worker -> that worker
    paused_jobs: dict[str, str]  # job running on a worker when it was paused -> worker
    max_attempts: int


@dataclass
class Snapshot:
    """The database's rows and the bucket's keys once the soak drained."""

    jobs: dict[str, dict[str, Any]]
    concepts: dict[str, dict[str, Any]]
    artifacts: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    cleanups: list[str]
    objects: set[str]  # keys under concepts/, without the storage prefix


@dataclass
class Findings:
    lost: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    duplicated: list[dict[str, Any]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    missing_artifacts: list[dict[str, Any]] = field(default_factory=list)
    over_attempts: list[dict[str, Any]] = field(default_factory=list)
    paused_or_skewed_failed: list[dict[str, Any]] = field(default_factory=list)
    cancels_not_kept: list[dict[str, Any]] = field(default_factory=list)
    webhooks_missing: list[dict[str, Any]] = field(default_factory=list)
    webhook_ids_unknown: list[dict[str, Any]] = field(default_factory=list)
    idempotency_violations: list[dict[str, Any]] = field(default_factory=list)
    pending_cleanups: list[str] = field(default_factory=list)
    # Not a violation by itself (a job that lost its worker MIFO_MAX_ATTEMPTS times fails as
    # `worker_lost`), but under faults alone every other failure deserves a look.
    failed: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {name: len(value) for name, value in self.__dict__.items()}


def check(evidence: Evidence, snap: Snapshot) -> Findings:
    found = Findings(pending_cleanups=list(snap.cleanups))
    _queue(evidence, snap, found)
    _results(evidence, snap, found)
    found.orphans = _orphans(snap)
    _attempts(evidence, snap, found)
    _cancels(evidence, snap, found)
    _webhooks(evidence, snap, found)
    for repeat in evidence.idempotency:  # None: that copy gave up retrying, answered nothing
        if len({repeat["first"], *repeat["repeated"]} - {None}) > 1:
            found.idempotency_violations.append(repeat)
    return found


def _queue(evidence: Evidence, snap: Snapshot, found: Findings) -> None:
    """The total-queue part: every accepted job ended exactly once; nothing else exists."""
    for job_id in sorted(evidence.accepted):
        row = snap.jobs.get(job_id)
        if row is None:
            found.lost.append({"job": job_id, "status": None, "why": "no row"})
        elif row["status"] not in TERMINAL:
            found.lost.append({"job": job_id, "status": row["status"], "why": "not terminal"})
    found.unexpected = sorted(set(snap.jobs) - set(evidence.accepted))


def _results(evidence: Evidence, snap: Snapshot, found: Findings) -> None:
    """Each succeeded job's files exist and come from one attempt, its last; at most one
    completion event per job."""
    by_job: dict[str, list[str]] = defaultdict(list)
    for art in snap.artifacts:
        if art["key"] not in snap.objects:
            found.missing_artifacts.append({"job": art["job_id"], "key": art["key"]})
        if art["job_id"] is not None:
            by_job[art["job_id"]].append(art["key"])
    completions: dict[str, int] = defaultdict(int)
    for d in snap.deliveries:
        if d["event"] == "job.completed":
            completions[d["job_id"]] += 1
    for job_id, row in snap.jobs.items():
        if completions[job_id] > 1:
            found.duplicated.append({"job": job_id, "why": f"{completions[job_id]} completions"})
        folders = {_attempt_folder(key) or "?" for key in by_job[job_id]}
        if row["kind"] == "synthesize" and len(folders) > 1:
            found.duplicated.append({"job": job_id, "why": f"artifacts of {sorted(folders)}"})
        if row["status"] != "succeeded":
            continue
        if row["kind"] == "synthesize":
            want = f"attempt-{row['attempts']}/"
            if not by_job[job_id] or any(not f.endswith(want) for f in folders):
                why = f"artifacts {sorted(by_job[job_id])}, last attempt {row['attempts']}"
                found.missing_artifacts.append({"job": job_id, "why": why})
        else:
            concept = snap.concepts.get(row["concept_id"] or "")
            files: str = (concept or {}).get("files") or ""
            last = f"attempt-{row['attempts']}/"
            stored = bool(files) and any(k.startswith(files) for k in snap.objects)
            if not stored or not files.endswith(last):
                found.missing_artifacts.append({"job": job_id, "why": f"learned files {files}"})


def _attempt_folder(key: str) -> str | None:
    match = ATTEMPT.match(key)
    return match.group(0) if match else None


def _orphans(snap: Snapshot) -> list[str]:
    """Objects nothing points at. A concept's folder holds its inputs (each an artifact
    row), the learned files of the attempt that succeeded (`files`), and under
    `syntheses/<job>/attempt-N/` the output of a succeeded job's artifact attempt; anything
    else (another attempt's files, a failed or canceled job's, a deleted or never committed
    concept's) is an orphan once maintenance has had its turn."""
    artifact_keys = {a["key"] for a in snap.artifacts}
    kept_folders = {
        folder
        for a in snap.artifacts
        if (folder := _attempt_folder(a["key"])) is not None
        and snap.jobs.get(a["job_id"] or "", {}).get("status") == "succeeded"
    }
    orphans = []
    for key in sorted(snap.objects):
        parts = key.split("/")
        concept = snap.concepts.get(parts[1]) if len(parts) > 2 else None
        if concept is None:
            orphans.append(key)
            continue
        an_input = key in artifact_keys and "/inputs/" in key
        learned = bool(concept["files"]) and key.startswith(concept["files"])
        if not (an_input or learned or _attempt_folder(key) in kept_folders):
            orphans.append(key)
    return orphans


def _attempts(evidence: Evidence, snap: Snapshot, found: Findings) -> None:
    for job_id, row in snap.jobs.items():
        if row["status"] == "failed":
            found.failed.append(_brief(job_id, row))
        lost_worker = row["status"] == "failed" and row["error_type"] == "worker_lost"
        if row["attempts"] > evidence.max_attempts and not lost_worker:
            found.over_attempts.append(_brief(job_id, row))
    for jobs, how in ((evidence.paused_jobs, "paused"), (evidence.skewed_jobs, "skewed")):
        for job_id, worker in sorted(jobs.items()):
            ended = snap.jobs.get(job_id)
            if ended is not None and _failed_but_not_lost(ended):
                found.paused_or_skewed_failed.append({**_brief(job_id, ended), how: worker})


def _failed_but_not_lost(row: dict[str, Any]) -> bool:
    return row["status"] == "failed" and row["error_type"] != "worker_lost"


def _brief(job_id: str, row: dict[str, Any]) -> dict[str, Any]:
    keys = ("kind", "status", "attempts", "losses", "error_type", "error_message")
    return {"job": job_id, **{k: row[k] for k in keys}}


def _cancels(evidence: Evidence, snap: Snapshot, found: Findings) -> None:
    """A cancel answered as `canceled` stays canceled; one answered 202 while the job still
    ran asked it to stop, so it must not succeed either."""
    for cancel in evidence.cancels:
        if cancel["code"] != 202:
            continue
        row = snap.jobs.get(cancel["job"])
        final = row["status"] if row else None
        broken = cancel["answered"] == "canceled" and final != "canceled"
        if broken or final == "succeeded":
            found.cancels_not_kept.append({**cancel, "final": final})


def _webhooks(evidence: Evidence, snap: Snapshot, found: Findings) -> None:
    """Each terminal job subscribed to `completed` got it at least once, every copy under
    the delivery row's id (the receiver's dedupe key); two ids for one job's completion is
    a duplicated result."""
    rows = {d["id"]: d for d in snap.deliveries}
    received: dict[str, set[str]] = defaultdict(set)
    for r in evidence.receipts:
        row = rows.get(r.webhook_id)
        if row is None or row["job_id"] != r.job_id or row["event"] != r.event:
            found.webhook_ids_unknown.append({"webhook_id": r.webhook_id, "job": r.job_id})
        if r.event == "job.completed":
            received[r.job_id].add(r.webhook_id)
    for job_id, row in snap.jobs.items():
        events = row["webhook_events"] or ["started", "progress", "completed"]
        wants = row["webhook_url"] and "completed" in events
        if wants and row["status"] in TERMINAL and not received[job_id]:
            outbox = [
                {"status": d["status"], "due_in_s": d["due_in_s"]}
                for d in snap.deliveries
                if d["job_id"] == job_id and d["event"] == "job.completed"
            ]
            found.webhooks_missing.append({"job": job_id, "outbox": outbox})
        if len(received[job_id]) > 1:
            why = f"{len(received[job_id])} webhook ids for its completion"
            found.duplicated.append({"job": job_id, "why": why})


def recovery(
    fault: Any, timelines: dict[str, list[tuple[float, str, int]]]
) -> tuple[float | None, float | None]:
    """(all, first): seconds from the fault's start until every job it hit, and until the
    first of them, was running again under a new attempt or had ended (for the broker: had
    left the queue). A re-queued job waits behind the backlog, so under a saturating load
    `all` is mostly queueing; `first` shows how soon the repair itself came. Without jobs
    hit, both are the component's own return. `all` is None when some job never came back."""
    if not fault.affected:
        return fault.component_back, fault.component_back
    backs = []
    for job_id in fault.affected:
        line = timelines.get(job_id, [])
        before = [a for t, _, a in line if t <= fault.started]
        attempts = before[-1] if before else 0
        back = next(
            (t for t, s, a in line if t > fault.started and _back(fault, s, a, attempts)), None
        )
        backs.append(None if back is None else round(back - fault.started, 2))
    known = [b for b in backs if b is not None]
    return (None if None in backs else max(known)), min(known, default=None)


def _back(fault: Any, status: str, attempts: int, before: int) -> bool:
    if status in TERMINAL:
        return True
    if fault.kind == "restart_redis":
        return status == "running"
    return status == "running" and attempts > before


def percentile(samples: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 2)


def latencies(evidence: Evidence, snap: Snapshot) -> dict[str, float | None]:
    """p50/p99 of succeeded jobs: created_at -> finished_at as the rows say (stamped by the
    API's and the worker's clocks, so a skewed worker moves them), and as the harness
    observed it (the answer of the POST -> the monitor first seeing the job ended)."""
    db, seen = [], []
    for job_id, row in snap.jobs.items():
        if row["status"] != "succeeded":
            continue
        if row["created_at"] and row["finished_at"]:
            db.append((row["finished_at"] - row["created_at"]).total_seconds())
        ended = next((t for t, s, _ in evidence.timelines.get(job_id, []) if s in TERMINAL), None)
        if ended is not None and job_id in evidence.accepted:
            seen.append(max(0.0, ended - evidence.accepted[job_id]))
    return {
        "p50_db_s": percentile(db, 50),
        "p99_db_s": percentile(db, 99),
        "p50_observed_s": percentile(seen, 50),
        "p99_observed_s": percentile(seen, 99),
    }
