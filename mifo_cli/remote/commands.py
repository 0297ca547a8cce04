"""The `mifo remote` commands: each reads its arguments, makes its requests through the
client and prints the answer; it returns the exit code (see `mifo_cli.remote.run`)."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from mifo_cli.remote import inputs
from mifo_cli.remote.output import (
    Console,
    body,
    concept_detail,
    concept_lines,
    concepts_table,
    job_lines,
    jobs_table,
)
from mifo_cli.remote.progress import reporter
from mifo_client import Client, Job

EXIT_JOB = 1  # the job failed or was canceled


class Detached(Exception):
    """Ctrl-C while waiting: the job goes on at the service."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


def how_to_follow(args: argparse.Namespace, job_id: str, command: str = "wait") -> str:
    """The command that follows (or cancels) the job, with this command's --api."""
    return f"mifo remote {command} {job_id}" + (f" --api {args.api}" if args.api else "")


def follow(client: Client, job_id: str, args: argparse.Namespace, console: Console) -> Job:
    """Wait for the job with progress on stderr; Ctrl-C leaves it running (Detached)."""
    show = reporter(console.err, args.quiet)
    try:
        return client.wait(job_id, timeout=args.timeout, on_progress=show)
    except KeyboardInterrupt:
        raise Detached(job_id) from None
    finally:
        show.close()


def finish(client: Client, job: Job, args: argparse.Namespace, console: Console) -> int:
    """Print the finished job (and download its files into --out); 1 unless it succeeded."""
    files: list[Path] = []
    if job.succeeded and args.out:
        files = save(client, job, args.out, args.previews)
    if not job.succeeded:
        why = f": {job.error.type}: {job.error.message}" if job.error else ""
        console.problem(None, f"job {job.id} {job.status}{why}", None)
    console.result(job_lines(job, files), body(job, files=[str(p) for p in files]))
    return 0 if job.succeeded else EXIT_JOB


def save(client: Client, job: Job, out: str, previews: bool) -> list[Path]:
    """The job's files in `out`, never over a file already there."""
    try:
        return client.download(job, inputs.out_folder(out), previews=previews, overwrite=False)
    except FileExistsError as exc:
        fix = "pick another --out folder, or move that file away: downloads never overwrite"
        raise inputs.UsageError("--out", f"{exc.filename} exists", fix) from None


def submitted(job: Job, args: argparse.Namespace, console: Console, data: dict) -> None:
    console.result([*job_lines(job), f"follow it: {how_to_follow(args, job.id)}"], data)


def learn(client: Client, args: argparse.Namespace, console: Console) -> int:
    image = inputs.existing_file(args.image, "IMAGE")
    masks = [inputs.existing_file(m, f"masks[{i}]") for i, m in enumerate(args.masks)]
    options = inputs.options(args.config, args.option)
    if args.out:
        inputs.out_folder(args.out)
    created = client.learn(
        image, masks, names=args.names, options=options, webhook_url=args.webhook_url
    )
    if not (args.wait or args.out):
        lines = [*concept_lines(created.concept), *job_lines(created.job)]
        lines.append(f"follow it: {how_to_follow(args, created.job.id)}")
        console.result(lines, body(created))
        return 0
    return finish(client, follow(client, created.job.id, args, console), args, console)


def synthesize(client: Client, args: argparse.Namespace, console: Console) -> int:
    boxes = inputs.boxes(args.box)
    options = inputs.options(args.config, args.option)
    if args.out:
        inputs.out_folder(args.out)
    job = client.synthesize(
        args.concept,
        args.prompt,
        boxes,
        num_images=args.num_images,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        box_control=False if args.no_box_control else None,
        evaluate=True if args.evaluate else None,
        options=options,
        webhook_url=args.webhook_url,
    )
    if not (args.wait or args.out):
        submitted(job, args, console, body(job))
        return 0
    return finish(client, follow(client, job.id, args, console), args, console)


def evaluate(client: Client, args: argparse.Namespace, console: Console) -> int:
    if args.out:
        inputs.out_folder(args.out)
    job = client.evaluate(
        args.concept,
        args.prompt,
        images_per_prompt=args.images_per_prompt,
        steps=args.steps,
        seed=args.seed,
        webhook_url=args.webhook_url,
    )
    if not (args.wait or args.out):
        submitted(job, args, console, body(job))
        return 0
    return finish(client, follow(client, job.id, args, console), args, console)


def wait(client: Client, args: argparse.Namespace, console: Console) -> int:
    if args.out:
        inputs.out_folder(args.out)
    return finish(client, follow(client, args.job, args, console), args, console)


def download(client: Client, args: argparse.Namespace, console: Console) -> int:
    job = client.job(args.job)
    if not job.succeeded:
        if job.done:
            return finish(client, job, args, console)
        fix = f"wait for it first: mifo remote wait {job.id} --out {args.out}"
        raise inputs.UsageError("JOB", f"job {job.id} is {job.status}: no files yet", fix)
    files = save(client, job, args.out, args.previews)
    console.result([str(p) for p in files], body(job, files=[str(p) for p in files]))
    return 0


def cancel(client: Client, args: argparse.Namespace, console: Console) -> int:
    job = client.cancel(args.job)
    if args.wait:
        job = follow(client, job.id, args, console)
        console.result(job_lines(job), body(job))
        return 0 if job.status == "canceled" else EXIT_JOB
    note = "" if job.done else "; it stops at its next step"
    console.result([f"job {job.id} {job.status}{note}"], body(job))
    return 0


def jobs(client: Client, args: argparse.Namespace, console: Console) -> int:
    statuses = [s.strip() for text in args.status or [] for s in text.split(",") if s.strip()]
    found = client.jobs(
        statuses or None, kind=args.kind, concept=args.concept, page_size=min(args.limit, 100)
    )
    listed = list(itertools.islice(found, args.limit))
    console.result(jobs_table(listed) if listed else ["no jobs"], [body(j) for j in listed])
    return 0


def concepts_list(client: Client, args: argparse.Namespace, console: Console) -> int:
    listed = list(itertools.islice(client.concepts(page_size=min(args.limit, 100)), args.limit))
    text = concepts_table(listed) if listed else ["no concepts"]
    console.result(text, [body(c) for c in listed])
    return 0


def concepts_get(client: Client, args: argparse.Namespace, console: Console) -> int:
    concept = client.concept(args.concept)
    console.result(concept_detail(concept), body(concept))
    return 0


def concepts_delete(client: Client, args: argparse.Namespace, console: Console) -> int:
    client.delete_concept(args.concept)
    text = [f"concept {args.concept} deleted, with its files and jobs"]
    console.result(text, {"id": args.concept, "deleted": True})
    return 0
