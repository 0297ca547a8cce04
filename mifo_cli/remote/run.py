"""Running one `mifo remote` command: the client from --api/--key (or the environment), and
every way it can fail turned into a readable problem on stderr and an exit code."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from mifo_cli.remote.commands import Detached, how_to_follow
from mifo_cli.remote.inputs import UsageError
from mifo_cli.remote.output import Console
from mifo_client import (
    AuthenticationError,
    Client,
    MifoConnectionError,
    MifoError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    WaitTimeoutError,
)

DEFAULT_API = "http://127.0.0.1:8000"  # `mifo serve`
EXIT_OK = 0  # EXIT_JOB = 1: the job failed or was canceled (commands.py)
EXIT_INPUT = 2  # bad usage or input: refused here, or by the service (4xx)
EXIT_UNREACHABLE = 3  # no answer from the service, or it could not serve (5xx, 429)
EXIT_AUTH = 4  # no API key, or one the service does not accept (401, 403)
EXIT_TIMEOUT = 5  # --timeout passed while waiting; the job goes on
EXIT_INTERRUPTED = 130  # Ctrl-C; a job being waited for goes on
EXIT_BROKEN_PIPE = 141  # stdout closed early (`| head`): 128 + SIGPIPE, as a shell reports it

Command = Callable[[Client, argparse.Namespace, Console], int]


def api_url(args: argparse.Namespace) -> str:
    return args.api or os.environ.get("MIFO_API_URL") or DEFAULT_API


def api_key(args: argparse.Namespace) -> str | None:
    return args.key if args.key is not None else os.environ.get("MIFO_API_KEY") or None


def run(args: argparse.Namespace) -> int:
    """`args.remote` with a client; its exit code, or the code of what went wrong."""
    console = Console(args.json)
    url = api_url(args)
    try:
        with Client(url, api_key(args)) as client:
            return int(args.remote(client, args, console))
    except UsageError as exc:
        console.problem(exc.field, exc.detail, exc.fix)
        return EXIT_INPUT
    except Detached as exc:
        console.note(f"\nstopped waiting; job {exc.job_id} keeps running at the service")
        console.note(f"  follow it: {how_to_follow(args, exc.job_id)}")
        console.note(f"  cancel it: {how_to_follow(args, exc.job_id, 'cancel')}")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        console.note("\ninterrupted")
        return EXIT_INTERRUPTED
    except MifoError as exc:
        return refused(console, exc, url)
    except BrokenPipeError:
        return broken_pipe()


def broken_pipe() -> int:
    """The reader of stdout went away: nothing more to say, and nothing for Python to flush
    into the closed pipe at exit (stdout now points at os.devnull)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (tests capture it)
        pass
    return EXIT_BROKEN_PIPE


def refused(console: Console, exc: MifoError, url: str) -> int:
    """Print what the service (or its absence) said; the exit code for it."""
    if isinstance(exc, MifoConnectionError):
        cause = exc.__cause__ or exc
        fix = "start it (`mifo serve`), or give its address with --api URL or MIFO_API_URL"
        console.problem("--api", f"cannot reach the service at {url}: {cause}", fix)
        return EXIT_UNREACHABLE
    if isinstance(exc, WaitTimeoutError):
        console.problem("--timeout", exc.detail, "wait again with `mifo remote wait JOB`")
        return EXIT_TIMEOUT
    if isinstance(exc, AuthenticationError | PermissionDeniedError):
        console.refused(exc)
        if not exc.fix:
            console.note("  fix: give a key with --key or MIFO_API_KEY (`mifo keys create`)")
        return EXIT_AUTH
    console.refused(exc)
    if isinstance(exc, ServerError | RateLimitedError):
        return EXIT_UNREACHABLE
    return EXIT_INPUT
