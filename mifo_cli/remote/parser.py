"""The arguments of `mifo remote COMMAND`."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from mifo_cli.remote import commands, segment
from mifo_cli.remote.run import run

Command = Callable[..., int]

EPILOG = (
    "exit codes: 0 done; 1 the job failed or was canceled; 2 bad usage or input (refused here "
    "or by the service); 3 service unreachable or failing; 4 API key missing or refused; "
    "5 --timeout passed (the job goes on); 130 Ctrl-C (a job being waited for goes on); "
    "141 stdout closed early (e.g. piped into head)"
)


def count(text: str) -> int:
    """A whole number >= 1 (--limit); argparse's `type` turns the error into exit 2."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is below 1: give 1 or more")
    return value


def finite(text: str) -> float:
    """A number that is not NaN or infinite (JSON has neither)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number: give e.g. 7.5")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds >= 0 (--timeout)."""
    value = finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0: give 0 or more seconds")
    return value


def _common() -> argparse.ArgumentParser:
    """--api, --key and --json, on every command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api",
        metavar="URL",
        help="the service (default: $MIFO_API_URL, else http://127.0.0.1:8000)",
    )
    common.add_argument(
        "--key",
        help="API key (default: $MIFO_API_KEY; the variable keeps it out of the process list)",
    )
    common.add_argument("--json", action="store_true", help="print the answer as JSON on stdout")
    return common


def _progress() -> argparse.ArgumentParser:
    """The options of a command that may wait for its job."""
    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument(
        "--timeout", type=seconds, metavar="SECONDS", help="stop waiting after this (exit 5)"
    )
    progress.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return progress


def _files() -> argparse.ArgumentParser:
    """The options of a command that may download its job's files."""
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument(
        "--out", metavar="DIR", help="wait, then save the job's files into DIR (made if missing)"
    )
    files.add_argument("--previews", action="store_true", help="with --out: the layout previews")
    return files


def _command(sub: Any, name: str, func: Command, parents: list[Any], **kw: Any) -> Any:
    p = sub.add_parser(name, parents=parents, epilog=EPILOG, **kw)
    p.set_defaults(func=run, remote=func)
    return p


def _submit_options(p: argparse.ArgumentParser, config_help: str) -> None:
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one option (VALUE is JSON, else text), repeatable: e.g. phase1_steps=40",
    )
    p.add_argument("--config", metavar="FILE", help=config_help)
    p.add_argument("--webhook-url", metavar="URL", help="send the job's events there")
    p.add_argument("--wait", action="store_true", help="wait for the job, showing its progress")


def _add_learn(sub: Any, common: Any, waiting: list[Any]) -> None:
    p = _command(
        sub,
        "learn",
        commands.learn,
        [common, *waiting],
        help="upload an image and its instance masks: a learning job",
        description="Upload one image and one mask per instance; the service learns a token "
        "per instance. --out DIR saves the tokens' attention maps.",
    )
    p.add_argument("image", metavar="IMAGE", help="the scene (PNG or JPEG)")
    p.add_argument("masks", metavar="MASK", nargs="+", help="one mask per instance, in order")
    p.add_argument("--names", help="comma-separated instance names, one per mask")
    _submit_options(p, "a JSON object of LearnConfig fields (--option overrides them)")


def _add_synthesize(sub: Any, common: Any, waiting: list[Any]) -> None:
    p = _command(
        sub,
        "synthesize",
        commands.synthesize,
        [common, *waiting],
        help="images of a ready concept, one box per instance: a synthesis job",
        description="Queue a synthesis of a ready concept; --out DIR saves its images.",
    )
    p.add_argument("concept", metavar="CONCEPT", help="the concept id")
    p.add_argument("prompt", metavar="PROMPT", help='naming the tokens, e.g. "a photo of <asset0>"')
    p.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="TOKEN=x0,y0,x1,y1",
        help="a token's (or instance name's) box as fractions of the image, repeatable",
    )
    p.add_argument("--num-images", type=int, metavar="N", help="images, one seed each")
    p.add_argument("--seed", type=int, help="the first image's seed (then seed+1, ...)")
    p.add_argument("--steps", type=int, metavar="N", help="sampling steps")
    p.add_argument("--guidance-scale", type=finite, metavar="F", help="classifier-free guidance")
    p.add_argument("--no-box-control", action="store_true", help="plain generation, boxes unused")
    p.add_argument(
        "--evaluate", action="store_true", help="score each image: SIM-C, SIM-D, NSIM-D, CS"
    )
    _submit_options(p, "a JSON object of SynthesisConfig fields (--option overrides them)")


def _add_evaluate(sub: Any, common: Any, progress: Any) -> None:
    p = _command(
        sub,
        "evaluate",
        commands.evaluate,
        [common, progress],
        help="score a ready concept (SIM-C, SIM-D, NSIM-D, CS): an evaluation job",
        description="Queue an evaluation of a ready concept: each prompt synthesised with one "
        "box per instance and every image scored. Waiting (--wait or --out), it prints a table "
        "of the metrics per token and their mean; --out DIR saves evaluation.json, the chart "
        "and the images.",
    )
    p.add_argument("concept", metavar="CONCEPT", help="the concept id")
    p.add_argument(
        "--prompt",
        action="append",
        metavar="PROMPT",
        help="a prompt with {token} where each instance goes (run once per instance), or one "
        "naming the concept's tokens; repeatable (default: the paper's ten prompts)",
    )
    p.add_argument("--images-per-prompt", type=int, metavar="N", help="images of each synthesis")
    p.add_argument("--steps", type=int, metavar="N", help="sampling steps of each synthesis")
    p.add_argument("--seed", type=int, help="each synthesis' first image's seed (then seed+1)")
    p.add_argument("--webhook-url", metavar="URL", help="send the job's events there")
    p.add_argument("--wait", action="store_true", help="wait for the job, then print the table")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="wait, then save evaluation.json, the chart and the images into DIR (made if missing)",
    )
    p.set_defaults(previews=False)


def _add_jobs(sub: Any, common: Any, progress: Any, files: Any) -> None:
    p = _command(sub, "wait", commands.wait, [common, progress, files], help="wait for a job")
    p.add_argument("job", metavar="JOB", help="the job id")
    p = _command(sub, "download", commands.download, [common], help="save a job's files")
    p.add_argument("job", metavar="JOB", help="the job id")
    p.add_argument("--out", metavar="DIR", required=True, help="the folder (made if missing)")
    p.add_argument("--previews", action="store_true", help="the layout previews too")
    p = _command(
        sub, "cancel", commands.cancel, [common, progress], help="cancel a queued or running job"
    )
    p.add_argument("job", metavar="JOB", help="the job id")
    p.add_argument("--wait", action="store_true", help="wait until it has stopped")
    p = _command(sub, "jobs", commands.jobs, [common], help="list jobs, newest first")
    p.add_argument(
        "--status",
        action="append",
        metavar="STATUS",
        help="queued, running, succeeded, failed or canceled; comma-separated or repeated",
    )
    p.add_argument("--kind", help="only jobs of this kind: learn, synthesize, ...")
    p.add_argument("--concept", metavar="ID", help="the jobs of one concept")
    p.add_argument("--limit", type=count, default=20, metavar="N", help="at most N (default 20)")


def _add_concepts(sub: Any, common: Any) -> None:
    concepts = sub.add_parser("concepts", help="list, show or delete concepts", epilog=EPILOG)
    csub = concepts.add_subparsers(dest="concepts_command", metavar="ACTION", required=True)
    p = _command(csub, "list", commands.concepts_list, [common], help="concepts, newest first")
    p.add_argument("--limit", type=count, default=20, metavar="N", help="at most N (default 20)")
    p = _command(csub, "get", commands.concepts_get, [common], help="one concept")
    p.add_argument("concept", metavar="ID", help="the concept id")
    p = _command(
        csub, "delete", commands.concepts_delete, [common], help="delete it, its files and jobs"
    )
    p.add_argument("concept", metavar="ID", help="the concept id")


def register(sub: Any) -> None:
    """Add `mifo remote` and its commands to the `mifo` command."""
    remote = sub.add_parser(
        "remote",
        help="Use a running service: learn, synthesize, evaluate, segment, jobs, concepts, "
        "cancel, download.",
        description="Drive a MIFO service over HTTP (the Python client): submit jobs, follow "
        "them, download their files.",
        epilog=EPILOG,
    )
    rsub = remote.add_subparsers(dest="remote_command", metavar="COMMAND", required=True)
    common, progress, files = _common(), _progress(), _files()
    _add_learn(rsub, common, [progress, files])
    _add_synthesize(rsub, common, [progress, files])
    _add_evaluate(rsub, common, progress)
    segment.add_parser(rsub, [common, progress], run, EPILOG)
    _add_jobs(rsub, common, progress, files)
    _add_concepts(rsub, common)
