"""Write mifo_client/client.py (the blocking `Client`) from mifo_client/async_client.py (the
`AsyncClient`) with unasync: `async` and `await` dropped, the async names below turned into
their blocking twins, then the imports sorted and the code laid out by ruff. The generated file is committed, so the
client imports without this script or unasync.

Run: .venv/bin/python scripts/unasync_client.py            (rewrite client.py)
     .venv/bin/python scripts/unasync_client.py --check    (exit 1, with a diff, if it differs)
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import unasync

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "mifo_client" / "async_client.py"
TARGET = ROOT / "mifo_client" / "client.py"
# unasync's own list covers __aenter__, __aexit__ and AsyncIterator.
NAMES = {
    "AsyncClient": "Client",  # ours, and httpx's
    "AsyncBaseTransport": "BaseTransport",
    "aclose": "close",
    "aread": "read",
    "aiter_bytes": "iter_bytes",
    "aiter_lines": "iter_lines",
    "areport": "report",  # _core.Waiter: on_progress is called, never awaited
    "asyncio": "time",  # asyncio.sleep -> time.sleep
}
HEADER = f"""\
# Generated from mifo_client/{SOURCE.name} by scripts/{Path(__file__).name}: do not edit.
# Edit {SOURCE.name}, then regenerate: python scripts/{Path(__file__).name}
"""


def generate(folder: Path) -> Path:
    """Write the blocking client into `folder` (its own _async/ and _sync/ inside); its path."""
    source = folder / "_async" / TARGET.name
    source.parent.mkdir(parents=True)
    shutil.copyfile(SOURCE, source)
    unasync.unasync_files([str(source)], [unasync.Rule("/_async/", "/_sync/", NAMES)])
    written = folder / "_sync" / TARGET.name
    text = HEADER + written.read_text()
    for command in (["check", "--select", "I", "--fix"], ["format"]):  # imports sorted again
        text = _ruff(*command, text=text)
    written.write_text(text)
    return written


def _ruff(*command: str, text: str) -> str:
    """`text` through ruff, with this project's settings, as if it were client.py."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--stdin-filename", str(TARGET), "-"],
        input=text,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def differences(generated: Path, committed: Path = TARGET) -> list[str]:
    """A unified diff from `committed` to `generated`; empty when they are the same."""
    return list(
        difflib.unified_diff(
            committed.read_text().splitlines(keepends=True) if committed.exists() else [],
            generated.read_text().splitlines(keepends=True),
            str(committed.relative_to(ROOT) if committed.is_relative_to(ROOT) else committed),
            "generated",
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on drift")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        generated = generate(Path(folder))
        diff = differences(generated)
        if not args.check:
            shutil.copyfile(generated, TARGET)
    if args.check and diff:
        sys.stdout.writelines(diff)
        print(f"\n{TARGET.relative_to(ROOT)} is stale: run python scripts/unasync_client.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
