"""The `mifo` command: engine commands (learn, synthesize) and service commands."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Each module exposes register(subparsers); commands set `func` on their parser.
# Service commands live outside the engine so that the engine never imports the web stack.
_COMMAND_MODULES = ("mifo_engine.cli", "core.cli")


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


if __name__ == "__main__":
    sys.exit(main())
