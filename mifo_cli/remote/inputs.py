"""The command line's inputs read into what the client takes: boxes, options, files. A bad one
raises UsageError naming the option and the fix, before any request is sent."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class UsageError(Exception):
    """Bad input caught on this side: `field` is the option or argument at fault."""

    def __init__(self, field: str, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.field, self.detail, self.fix = field, detail, fix


BOX_EXAMPLE = 'write e.g. --box "<asset0>=0.05,0.30,0.45,0.80"'


def parse_box(text: str) -> tuple[str, list[float]]:
    """`TOKEN=x0,y0,x1,y1` (the token may be an instance name) into (token, coordinates)."""
    key, sep, coords = text.rpartition("=")
    try:
        values = [float(v) for v in coords.split(",")]
    except ValueError:
        values = []
    if not sep or not key.strip() or len(values) != 4:
        raise UsageError("--box", f"{text!r} is not TOKEN=x0,y0,x1,y1", BOX_EXAMPLE)
    if not all(math.isfinite(v) for v in values):
        detail = f"{text!r} has a coordinate that is not a finite number"
        raise UsageError("--box", detail, "give fractions of the image between 0 and 1")
    return key.strip(), values


def boxes(texts: Sequence[str]) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for text in texts:
        token, values = parse_box(text)
        if token in found:
            raise UsageError("--box", f"two boxes for {token}", "give each token one --box")
        found[token] = values
    return found


class NotFinite(ValueError):
    """NaN or Infinity in JSON: Python reads them, JSON (and so the service) has neither."""


def _refuse_constant(name: str) -> Any:
    raise NotFinite(name)


def strict_json(text: str) -> Any:
    """json.loads, refusing NaN, Infinity and -Infinity (NotFinite); also numbers too
    large for a float (1e999), which the json module reads as infinite."""
    found = json.loads(text, parse_constant=_refuse_constant)
    if _infinite(found):
        raise NotFinite("a number too large")
    return found


def _infinite(found: Any) -> bool:
    if isinstance(found, float):
        return not math.isfinite(found)
    if isinstance(found, dict):
        return any(_infinite(v) for v in found.values())
    if isinstance(found, list):
        return any(_infinite(v) for v in found)
    return False


def _value(key: str, text: str) -> Any:
    """JSON when it parses (numbers, booleans, lists), else the text itself."""
    try:
        return strict_json(text)
    except NotFinite as exc:
        detail = f"{key}={text} holds {exc}, which JSON cannot carry"
        raise UsageError(
            "--option", detail, f"give {key} a finite number, e.g. {key}=7.5"
        ) from None
    except ValueError:
        return text


def options(config: str | None, pairs: Sequence[str]) -> dict[str, Any] | None:
    """The options object: the JSON file of --config, then each --option KEY=VALUE over it;
    None when neither is given (the server's defaults)."""
    found: dict[str, Any] = {}
    if config is not None:
        found = _config_file(config)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fix = "write e.g. --option phase1_steps=40 (the value is JSON, else text)"
            raise UsageError("--option", f"{pair!r} is not KEY=VALUE", fix)
        found[key.strip()] = _value(key.strip(), value)
    return found if config is not None or pairs else None


def _config_file(path: str) -> dict[str, Any]:
    fix = 'give a JSON object of options, e.g. {"phase1_steps": 40}'
    try:
        found = strict_json(Path(path).read_text())
    except OSError as exc:
        raise UsageError("--config", f"cannot read {path}: {exc.strerror}", fix) from None
    except NotFinite as exc:
        detail = f"{path} holds {exc}, which JSON cannot carry"
        raise UsageError("--config", detail, "give finite numbers only") from None
    except ValueError as exc:
        raise UsageError("--config", f"{path} is not JSON: {exc}", fix) from None
    if not isinstance(found, dict):
        raise UsageError("--config", f"{path} holds a {type(found).__name__}", fix)
    return found


def existing_file(path: str, field: str) -> Path:
    found = Path(path)
    if not found.is_file():
        raise UsageError(field, f"{path}: no such file", "give the path of a PNG or JPEG file")
    return found


def out_folder(path: str) -> Path:
    found = Path(path)
    if found.exists() and not found.is_dir():
        raise UsageError("--out", f"{path} is a file", "give a folder (it is made if missing)")
    return found
