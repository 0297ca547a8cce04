"""`Prefer: wait=N` (RFC 7240) on the job-creating POSTs: answer when the job ends, or after
N seconds at most (MAX_WAIT; a larger N is capped to it, `wait` alone means MAX_WAIT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.request import parse_http_list

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
    not this service's and are ignored, as RFC 7240 asks. The list is split by the standard
    library's RFC 7230 list parser (commas inside quoted strings do not split); the one
    preference read here is matched by hand, as no maintained library parses Prefer."""
    for line in values:
        for item in parse_http_list(line):
            name, equals, value = item.split(";", 1)[0].partition("=")
            if name.strip().lower() == "wait":
                return _wait(value.strip())
    return None


def _wait(value: str) -> Wait:
    """`value`: what follows `wait=`; empty (`wait`, `wait=`, `wait=""`) means no value,
    RFC 7240 section 2, which waits MAX_WAIT."""
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise _invalid(value, "its quoted string is not closed")
        value = value[1:-1]
    if not value:
        return Wait(MAX_WAIT)
    if not value.isascii() or not value.isdigit():
        raise _invalid(value, "the wait is whole seconds")
    digits = value.lstrip("0") or "0"
    # More digits than any wait worth reading: capped without converting them all.
    return Wait(MAX_WAIT if len(digits) > 4 else min(int(digits), MAX_WAIT))


def _invalid(value: str, why: str) -> Problem:
    shown = value if len(value) <= 40 else f"{value[:40]}..."
    return Problem(
        "invalid_prefer",
        f"Prefer has wait={shown!r}; {why}.",
        field="Prefer",
        fix=_FIX,
    )


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
    },
    "Location": {
        "description": "The job: `/v1/jobs/{id}` (GET it, or its `/events` stream).",
        "schema": {"type": "string"},
    },
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
