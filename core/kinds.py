"""The kinds of job: one row each, the only list of them.

A row says what the rest of the service needs to know of a kind as names and settings: the
value of `jobs.kind`, the Celery task and the queue its message goes to, the setting of its
time limit, whose job it is (a concept's, or the tenant's alone: `scope`), where its output
lies (under its concept's prefix, or for a tenant-scoped kind under the storage root, named
by the job's parameters), whether the job makes its concept (the concept's status follows
its end), and the route that creates it. The layers above keep their own tables keyed by
these names, each checked complete by a test (tests/test_kinds.py): the API's result
presenters (api.present.RESULTS) and the workers' runners (worker.runner.RUNNERS); the
workers register one Celery task per row. The Python client and `mifo remote` name their
method and command after the kind.

An unknown kind is an error (`UnknownKind`), never taken for another one. Code that sweeps
the job table (the reconciler, the maintenance sweeps) selects only the kinds listed here, so
a job of a kind that only a newer release knows is left to the processes that know it.

Adding a kind: docs/contributing.md, "Adding a job kind".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NAME_CHARS = 16  # jobs.kind is a String(16) column
# Whose job a kind's is: a concept's (jobs.concept_id set, the output under the concept's
# prefix, removed with it) or the tenant's alone (no concept; the output under the storage
# root, in a folder its job's parameters name, removed by its own retention).
CONCEPT, TENANT = "concept", "tenant"


class UnknownKind(ValueError):
    """A job kind (or the task of one) this release does not know."""

    def __init__(self, name: object, *, what: str = "job kind") -> None:
        self.name = name
        super().__init__(f"unknown {what} {name!r}; the known kinds are {', '.join(NAMES)}")


@dataclass(frozen=True)
class Kind:
    name: str  # the value of jobs.kind; also the client's method and `mifo remote` command
    task: str  # the Celery task a worker runs it with
    queue: str  # the broker queue of its messages: one per kind (positions count per queue)
    time_limit: str  # the Settings field of its time limit, in seconds
    output: str  # its output folder under the concept's prefix (or the storage root, scope
    # TENANT); `{job_id}` and the job's parameters (`{image_id}`) are filled in
    route: str  # the API route that creates it
    makes_concept: bool = False  # its end settles its concept's status (core.concepts)
    scope: str = CONCEPT  # CONCEPT or TENANT: whose job it is, where its output lies

    @property
    def time_limit_variable(self) -> str:
        """The environment variable of its time limit (docs/configuration.md)."""
        return f"MIFO_{self.time_limit.upper()}"

    def output_folder(
        self,
        concept_prefix: str | None,
        job_id: object,
        params: Mapping[str, Any] | None = None,
    ) -> str:
        """Where a job of this kind writes: removed before a retry and after a failure. A
        concept's kind writes under `concept_prefix`; a tenant's kind (no concept) under the
        storage root, in the folder its job's `params` name."""
        folder = self.output.format_map({**(params or {}), "job_id": job_id})
        if self.scope == TENANT:
            return folder
        if concept_prefix is None:
            raise ValueError(f"a {self.name} job writes under its concept's prefix; none given")
        return concept_prefix + folder


LEARN = Kind(
    name="learn",
    task="mifo.learn",
    queue="learn",
    time_limit="learn_time_limit",
    output="concept/",
    route="POST /v1/concepts",
    makes_concept=True,
)
SYNTHESIZE = Kind(
    name="synthesize",
    task="mifo.synthesize",
    queue="synthesize",
    time_limit="synthesize_time_limit",
    output="syntheses/{job_id}/",
    route="POST /v1/concepts/{concept_id}/syntheses",
)
EVALUATE = Kind(
    name="evaluate",
    task="mifo.evaluate",
    queue="evaluate",
    time_limit="evaluate_time_limit",
    output="evaluations/{job_id}/",
    route="POST /v1/concepts/{concept_id}/evaluations",
)
SEGMENT = Kind(
    name="segment",
    task="mifo.segment",
    queue="segment",
    time_limit="segment_time_limit",
    output="segmentations/{image_id}/{job_id}/",
    route="POST /v1/segmentations",
    scope=TENANT,
)

ALL: tuple[Kind, ...] = (LEARN, SYNTHESIZE, EVALUATE, SEGMENT)
NAMES: tuple[str, ...] = tuple(kind.name for kind in ALL)
QUEUES: tuple[str, ...] = tuple(kind.queue for kind in ALL)
# The kinds whose end settles their concept (a learning job and the concept it makes).
MAKE_CONCEPTS: tuple[str, ...] = tuple(kind.name for kind in ALL if kind.makes_concept)

_BY_NAME = {kind.name: kind for kind in ALL}
_BY_TASK = {kind.task: kind for kind in ALL}


def get(name: str) -> Kind:
    """The kind named `name` (a job row's `kind`); UnknownKind for any other."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise UnknownKind(name) from None


def by_task(task: str) -> Kind:
    """The kind a Celery task name runs; UnknownKind for a task of no kind."""
    try:
        return _BY_TASK[task]
    except (KeyError, TypeError):
        raise UnknownKind(task, what="job task") from None
