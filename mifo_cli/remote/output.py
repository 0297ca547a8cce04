"""What `mifo remote` prints: results on stdout (text, or JSON with --json), problems on
stderr in one or two lines."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from mifo_client import Concept, Evaluation, ImageMetrics, Job, MifoError


def duration(seconds: float | None) -> str:
    """H:MM:SS, or "?" when the service has no estimate."""
    return "?" if seconds is None else str(dt.timedelta(seconds=round(max(seconds, 0.0))))


def when(moment: dt.datetime | None) -> str:
    return "-" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def progress_text(job: Job) -> str:
    """`running phase1 12/40 31% ETA 0:00:25 rec 0.0213`, the queue place, or the status."""
    p = job.progress
    if job.status == "queued" and job.queue is not None:
        start = job.queue.estimated_start_seconds
        eta = f", starts in about {duration(start)}" if start is not None else ""
        return f"queued, position {job.queue.position}{eta}"
    if job.status != "running" or p.phase is None:
        return job.status
    steps = f" {p.step}/{p.total}" if p.step is not None and p.total else ""
    share = f" {p.fraction:.0%}" if p.fraction is not None else ""
    cancel = " (cancel requested)" if job.cancel_requested else ""
    return f"running {p.phase}{steps}{share} ETA {duration(p.eta_seconds)}{losses(job)}{cancel}"


def losses(job: Job) -> str:
    """` rec 0.0213 reward -0.41`: the latest step's loss terms, or nothing."""
    terms = job.progress.losses or {}
    return "".join(f" {name} {value:.3g}" for name, value in sorted(terms.items()))


def body(model: BaseModel, **extra: Any) -> dict[str, Any]:
    return {**model.model_dump(mode="json"), **extra}


class Console:
    """Where results and problems go; `json` prints bodies instead of text."""

    def __init__(self, json_output: bool, out: TextIO | None = None, err: TextIO | None = None):
        self.json = json_output
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def result(self, text: Iterable[str], data: Any) -> None:
        """The command's answer: `text`, one line each, or `data` as JSON."""
        if self.json:
            print(json.dumps(data, indent=2), file=self.out)
        else:
            for line in text:
                print(line, file=self.out)
        self.out.flush()  # a closed pipe fails here, inside run(), not at exit

    def problem(self, field: str | None, detail: str, fix: str | None, tag: str = "") -> None:
        head = f"{field}: " if field and not names(detail, field) else ""
        print(f"mifo remote: {head}{detail}{f' ({tag})' if tag else ''}", file=self.err)
        if fix:
            print(f"  fix: {fix}", file=self.err)

    def refused(self, error: MifoError) -> None:
        """The service's problem: field, detail, status and type; then the fix."""
        tag = " ".join(str(v) for v in (error.status, error.type) if v)
        self.problem(error.field, error.detail, error.fix, tag)

    def note(self, text: str) -> None:
        print(text, file=self.err)


def names(detail: str, field: str) -> bool:
    """Whether the detail already starts with the field (`masks[1] is 320x320 ...`)."""
    return detail.startswith(field) and detail[len(field) : len(field) + 1] in ("", ":", " ")


def job_lines(job: Job, files: Sequence[Path] = ()) -> list[str]:
    """A finished or submitted job for people: its status, its concept or images, files."""
    lines = [f"job {job.id} ({job.kind}) {progress_text(job)}"]
    result = job.result
    if job.succeeded and result is not None and result.concept is not None:
        lines += concept_lines(result.concept)
    for image in (result.images if result else None) or []:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in image.in_box_share.items())
        inside = f", in its box: {shares}" if shares else ""
        lines.append(f"  image {image.index}: seed {image.seed}{inside}{scores(image.metrics)}")
    if job.succeeded and result is not None and result.evaluation is not None:
        lines += evaluation_table(result.evaluation)
    if job.error is not None:
        lines.append(f"  error {job.error.type}: {job.error.message}")
    return lines + [str(path) for path in files]


def scores(metrics: ImageMetrics | None) -> str:
    """`, SIM-C 0.271; <asset0> SIM-D 0.612 NSIM-D 0.385 CS 0.102`: an image's metrics."""
    if metrics is None:
        return ""
    parts = [f"SIM-C {metrics.sim_c:.3f}"]
    for token, s in metrics.subjects.items():
        rest = "".join(
            f" {name} {value:.3f}"
            for name, value in (("NSIM-D", s.nsim_d), ("CS", s.cs))
            if value is not None
        )
        parts.append(f"{token} SIM-D {s.sim_d:.3f}{rest}")
    return ", " + "; ".join(parts)


def evaluation_table(evaluation: Evaluation) -> list[str]:
    """The metrics per token and their mean (each mean +- std; CS is the composite of the
    means), and the chart's link."""

    def cell(mean: float | None, std: float | None) -> str:
        return "-" if mean is None else f"{mean:.4f} +- {std or 0.0:.4f}"

    rows = [
        (
            r.token,
            r.name,
            str(r.images),
            cell(r.sim_c, r.sim_c_std),
            cell(r.sim_d, r.sim_d_std),
            cell(r.nsim_d, r.nsim_d_std),
            "-" if r.cs is None else f"{r.cs:.4f}",
        )
        for r in [*evaluation.rows, evaluation.mean]
    ]
    lines = table(("TOKEN", "NAME", "IMAGES", "SIM-C", "SIM-D", "NSIM-D", "CS"), rows)
    lines = [f"  {line}" for line in lines]
    if evaluation.chart is not None:
        lines.append(f"  chart: {evaluation.chart.url}")
    return lines


def concept_lines(concept: Concept) -> list[str]:
    tokens = ", ".join(f"{t.token} {t.name}" for t in concept.tokens) or "no tokens yet"
    lines = [f"concept {concept.id} {concept.status}: {tokens}"]
    if concept.error is not None:
        lines.append(f"  error {concept.error.type}: {concept.error.message}")
    return lines


def concept_detail(concept: Concept) -> list[str]:
    lines = concept_lines(concept)
    size = f"{concept.width}x{concept.height}" if concept.width else "-"
    lines += [
        f"  base model {concept.base_model or '-'}, {size} px, created {when(concept.created_at)}",
        f"  learning job {concept.learn_job_id or '-'}",
    ]
    for token, values in concept.diagnostics.items():
        if isinstance(values, dict):
            parts = ", ".join(f"{k} {v:.3g}" for k, v in values.items() if _number(v))
            lines.append(f"  {token}: {parts}")
    return lines


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns as wide as their widest cell; the last one unpadded."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  ".join([*(str(c).ljust(w) for c, w in zip(r, widths, strict=False)), str(r[-1])])
        for r in [header, *rows]
    ]


def jobs_table(jobs: Sequence[Job]) -> list[str]:
    rows = [(j.id, j.kind, progress_text(j), when(j.created_at), j.concept_id or "-") for j in jobs]
    return table(("JOB", "KIND", "STATUS", "CREATED", "CONCEPT"), rows)


def concepts_table(concepts: Sequence[Concept]) -> list[str]:
    rows = [
        (c.id, c.status, when(c.created_at), ", ".join(f"{t.token} {t.name}" for t in c.tokens))
        for c in concepts
    ]
    return table(("CONCEPT", "STATUS", "CREATED", "TOKENS"), rows)
