"""Waiting for a condition instead of sleeping for a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    message: str = "",
    interval: float = 0.01,
) -> None:
    """Return as soon as `predicate()` is true; AssertionError(message) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message or f"timed out after {timeout:g} s")
        time.sleep(interval)
