"""`Prefer: wait=N` (RFC 7240) on the job-creating POSTs: answer when the job ends, or after
N seconds at most (MAX_WAIT; a larger N is capped to it, `wait` alone means MAX_WAIT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from core.problems import Problem

MAX_WAIT = 60  # seconds: past this a client is better served by polling or the event stream

_FIX = "send `Prefer: wait=N` with N whole seconds, 0 to 60 (`wait` alone waits 60)"


@dataclass(frozen=True)
class Wait:
    seconds: int  # as applied: capped at MAX_WAIT

    @property
    def applied(self) -> dict[str, str]:
        return {"Preference-Applied": f"wait={self.seconds}"}


def parse_wait(values: list[str]) -> Wait | None:
    """The `wait` preference among the Prefer header lines `values`; other preferences are
    not this service's and are ignored, as RFC 7240 asks. Hand-written: the grammar needed
    here is one token, and no maintained library parses Prefer."""
    for line in values:
        for item in line.split(","):
            name, equals, value = item.split(";", 1)[0].partition("=")
            if name.strip().lower() != "wait":
                continue
            if not equals:
                return Wait(MAX_WAIT)
            value = value.strip().strip('"')
            if not value.isascii() or not value.isdigit():
                raise Problem(
                    422,
                    "invalid_prefer",
                    "Invalid Prefer header",
                    f"Prefer has wait={value!r}; the wait is whole seconds.",
                    field="Prefer",
                    fix=_FIX,
                )
            return Wait(min(int(value), MAX_WAIT))
    return None


async def prefer_wait(
    request: Request,
    _prefer: Annotated[
        str | None,
        Header(
            alias="Prefer",
            description="`wait=N` (RFC 7240): answer when the job ends (200, the finished "
            "body) or after N seconds (202, as without it); N at most 60, a larger N waits "
            "60, `wait` alone waits 60. `Preference-Applied: wait=N` says how long the "
            "server waited at most. Other preferences are ignored.",
            examples=["wait=30"],
        ),
    ] = None,
) -> Wait | None:
    # Every Prefer line counts (RFC 9110: lines of one field are one comma-separated list);
    # the parameter above is what the OpenAPI document shows.
    return parse_wait(request.headers.getlist("prefer"))


WaitDep = Annotated[Wait | None, Depends(prefer_wait)]


APPLIED = {
    "Preference-Applied": {
        "description": "`wait=N`: the request waited up to N seconds for the job to end.",
        "schema": {"type": "string"},
    }
}


def finished_response(model: type[Any], what: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entry of the 200 a waiting request gets."""
    return {
        200: {
            "model": model,
            "description": f"With `Prefer: wait`: {what} ended within the wait.",
            "headers": APPLIED,
        },
        202: {
            "description": "Accepted; with `Prefer: wait`, the job had not ended by then.",
            "headers": APPLIED,
        },
    }
