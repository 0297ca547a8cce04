"""Progress of a job being waited for, fed by the client's `wait(..., on_progress=...)`: a bar
per phase on a terminal (tqdm), plain lines otherwise (logs, pipes, CI)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from mifo_cli.remote.output import duration, losses, progress_text
from mifo_client import Job

LINE_SECONDS = 5.0  # plain output: at most one line this often within a phase


class PlainProgress:
    """One line per change of status or phase, else at most one every LINE_SECONDS."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream, clock
        self.last_key: tuple[str, str | None] | None = None
        self.last_line = 0.0

    def __call__(self, job: Job) -> None:
        key, now = (job.status, job.progress.phase), self.clock()
        if key == self.last_key and now - self.last_line < LINE_SECONDS and not job.done:
            return
        self.last_key, self.last_line = key, now
        print(f"job {job.id} {progress_text(job)}", file=self.stream, flush=True)

    def close(self, finished: bool = False) -> None:
        return None


class BarProgress:
    """A tqdm bar per phase: step/total, the job's share done and the service's ETA (the
    whole job's, not tqdm's guess from this phase); status changes as lines above it."""

    def __init__(self, stream: TextIO) -> None:
        from tqdm import tqdm  # only on a terminal

        self.tqdm, self.stream = tqdm, stream
        self.bar: Any = None
        self.phase: str | None = None
        self.status: str | None = None

    def __call__(self, job: Job) -> None:
        p = job.progress
        if job.status != self.status:
            self.status = job.status
            if job.done:
                self.close(finished=job.succeeded)
            self.tqdm.write(f"job {job.id} {progress_text(job)}", file=self.stream)
        if job.status != "running" or p.phase is None or not p.total:
            return
        if p.phase != self.phase:
            self.close(finished=True)  # the phases run in order: the last one is over
            self.phase = p.phase
            self.bar = self.tqdm(
                total=p.total,
                desc=f"{job.id[:8]} {p.phase}",
                unit="step",
                file=self.stream,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}",
            )
        self.bar.n = min(p.step or 0, p.total)
        share = f"{p.fraction:.0%}" if p.fraction is not None else "?"
        postfix = f"job {share}, ETA {duration(p.eta_seconds)}{losses(job)}"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()

    def close(self, finished: bool = False) -> None:
        if self.bar is not None:
            if finished:
                self.bar.n = self.bar.total
            self.bar.close()
            self.bar = None


class NoProgress:
    def __call__(self, job: Job) -> None:
        return None

    def close(self, finished: bool = False) -> None:
        return None


def reporter(stream: TextIO, quiet: bool) -> PlainProgress | BarProgress | NoProgress:
    if quiet:
        return NoProgress()
    return BarProgress(stream) if stream.isatty() else PlainProgress(stream)
