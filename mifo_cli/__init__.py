"""The `mifo` command: engine commands (learn, synthesize) and service commands.

The composition root: the only package that wires the engine, the API and the worker
together (`core/` and `api/` never import `worker/`)."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Sequence

# Each module exposes register(subparsers); commands set `func` on their parser.
# Service commands live outside the engine so that the engine never imports the web stack.
_COMMAND_MODULES = ("mifo_engine.cli", "mifo_cli.service", "mifo_cli.remote")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mifo",
        description="MIFO: learn instance tokens from one image, synthesise them with a layout, "
        "or run the job service.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The engine never reads the environment; the command line passes this one in.
    args.env_model = os.environ.get("MIFO_BASE_MODEL") or None
    return int(args.func(args) or 0)
