"""`mifo remote segment`: masks from clicks on an image, saved as the mask files `mifo learn`
and `mifo remote learn` take (mask_00.png, ... in instance order).

The clicks are options in order: `--point x,y` (on the instance), `--exclude x,y` (off it) and
`--box x0,y0,x1,y1` belong to the current instance, and `--instance` starts the next one.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from mifo_cli.remote import inputs
from mifo_cli.remote.output import Console, body, job_lines
from mifo_client import Client, Job

EXIT_JOB = 1  # the job failed
NEXT = "instance"  # the marker `--instance` leaves among the clicks
SHAPES = {"point": ("x,y", 2), "exclude": ("x,y", 2), "box": ("x0,y0,x1,y1", 4)}


def add_parser(sub: Any, parents: list[Any], run: Any, epilog: str) -> None:
    """Add `mifo remote segment` (`run`: the command runner, mifo_cli.remote.run.run)."""
    p = sub.add_parser(
        "segment",
        parents=parents,
        epilog=epilog,
        help="masks from clicks on an image, as mask files to learn from: a segmentation job",
        description="Ask the service for one mask per instance from clicks on the image: "
        "--point x,y on the instance, --exclude x,y off it, --box x0,y0,x1,y1 around it, in "
        "the image's pixels; --instance starts the next instance. --out DIR saves "
        "mask_00.png, mask_01.png, ... in instance order: the masks `mifo learn` and `mifo "
        "remote learn` take. --propose finds instances without clicks (candidate_00.png, ... "
        "best first).",
    )
    p.set_defaults(func=run, remote=segment)
    p.add_argument("image", metavar="IMAGE", nargs="?", help="the image (PNG, JPEG or WebP)")
    p.add_argument(
        "--image-id",
        metavar="ID",
        help="instead of IMAGE: the image_id an earlier segmentation printed (no upload; the "
        "service reuses the image's embedding)",
    )
    for flag, what in (("--point", "a point on"), ("--exclude", "a point off")):
        p.add_argument(
            flag,
            dest="clicks",
            action="append",
            type=_click(flag[2:]),
            metavar="X,Y",
            help=f"{what} the current instance, in pixels; repeatable",
        )
    p.add_argument(
        "--box",
        dest="clicks",
        action="append",
        type=_click("box"),
        metavar="X0,Y0,X1,Y1",
        help="a box around the current instance, in pixels",
    )
    p.add_argument(
        "--instance",
        dest="clicks",
        action="append_const",
        const=(NEXT, None),
        help="start the next instance (its mask is the next file)",
    )
    p.add_argument("--propose", action="store_true", help="find instances without clicks")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --propose: a proposal setting, e.g. points_per_side=16, repeatable",
    )
    p.add_argument("--out", metavar="DIR", help="save the masks into DIR (made if missing)")
    p.add_argument("--overlay", action="store_true", help="with --out: overlay.png too")


def _click(kind: str) -> Any:
    """The argparse type of a click option: (kind, the text as given)."""

    def parse(text: str) -> tuple[str, str]:
        return kind, text

    return parse


def instances(clicks: list[tuple[str, str | None]] | None) -> list[dict[str, Any]]:
    """The prompts, one per instance, from the clicks in the order given."""
    if not clicks:
        fix = "give --point X,Y on each instance (--instance between two), or --propose"
        raise inputs.UsageError("--point", "no clicks", fix)
    found: list[dict[str, Any]] = [{}]
    for kind, text in clicks:
        if kind == NEXT:
            found.append({})
            continue
        assert text is not None
        current, values = found[-1], numbers(kind, text)
        if kind == "box":
            if "box" in current:
                fix = "give each instance one --box; --instance starts the next one"
                raise inputs.UsageError("--box", f"two boxes for instance {len(found) - 1}", fix)
            current["box"] = values
        else:
            current.setdefault("points", []).append(values)
            current.setdefault("labels", []).append(0 if kind == "exclude" else 1)
    for i, prompt in enumerate(found):
        if not prompt:
            fix = "give each instance a --point or a --box; --instance goes between two"
            raise inputs.UsageError("--instance", f"instance {i} has no click", fix)
    return found


def numbers(kind: str, text: str) -> list[float]:
    """`x,y` or `x0,y0,x1,y1` as finite numbers; UsageError naming the option otherwise."""
    shape, count = SHAPES[kind]
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(math.isfinite(v) for v in values):
        fix = f"write --{kind} {shape} in the image's pixels, e.g. --{kind} " + ",".join(
            ["120", "80", "200", "160"][:count]
        )
        raise inputs.UsageError(f"--{kind}", f"{text!r} is not {shape}", fix)
    return [int(v) if v.is_integer() else v for v in values]


def segment(client: Client, args: argparse.Namespace, console: Console) -> int:
    image = _image(args)
    if args.out:
        inputs.out_folder(args.out)
    common: dict[str, Any] = {"image_id": args.image_id, "timeout": args.timeout}
    if args.propose:
        if args.clicks:
            fix = "leave the clicks out with --propose, or --propose out with clicks"
            raise inputs.UsageError("--propose", "--propose finds instances itself", fix)
        options = inputs.options(None, args.option)
        job = client.propose(image, options=options, **common)
    else:
        prompts = instances(args.clicks)
        job = client.segment(
            image,
            points=[p.get("points") for p in prompts],
            labels=[p.get("labels") for p in prompts],
            boxes=[p.get("box") for p in prompts],
            **common,
        )
    return _finish(client, job, args, console)


def _image(args: argparse.Namespace) -> Path | None:
    if args.image and args.image_id:
        fix = "give IMAGE the first time, then only --image-id ID"
        raise inputs.UsageError("--image-id", "both IMAGE and --image-id were given", fix)
    if not args.image and not args.image_id:
        fix = "give the image file, or --image-id of an earlier segmentation"
        raise inputs.UsageError("IMAGE", "no image", fix)
    return inputs.existing_file(args.image, "IMAGE") if args.image else None


def _finish(client: Client, job: Job, args: argparse.Namespace, console: Console) -> int:
    files: list[Path] = []
    if job.succeeded and args.out:
        files = _save(client, job, args.out, args.overlay)
    if not job.succeeded:
        why = f": {job.error.type}: {job.error.message}" if job.error else ""
        console.problem(None, f"job {job.id} {job.status}{why}", None)
    lines = [*job_lines(job), *segmentation_lines(job, args), *map(str, files)]
    console.result(lines, body(job, files=[str(p) for p in files]))
    return 0 if job.succeeded else EXIT_JOB


def _save(client: Client, job: Job, out: str, overlay: bool) -> list[Path]:
    """The masks (and the overlay) in `out`, never over a file already there."""
    folder = inputs.out_folder(out)
    try:
        return client.download_masks(job, folder, overwrite=False, overlay=overlay)
    except FileExistsError as exc:
        fix = "pick another --out folder, or move that file away: downloads never overwrite"
        raise inputs.UsageError("--out", f"{exc.filename} exists", fix) from None


def segmentation_lines(job: Job, args: argparse.Namespace) -> list[str]:
    """Each mask (or candidate) with its score, area and box, and how to click again."""
    found = job.result.segmentation if job.result else None
    if not job.succeeded or found is None:
        return []
    word, masks = (
        ("mask", found.masks) if found.mode == "prompts" else ("candidate", found.candidates)
    )
    lines = [f"  {word} {m.index}: score {m.score:.3f}, {m.area} px, box {m.box}" for m in masks]
    again = f"mifo remote segment --image-id {found.image_id} --point X,Y"
    lines.append(f"next clicks on this image: {again}" + (f" --api {args.api}" if args.api else ""))
    return lines
