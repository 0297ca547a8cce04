"""What the clients know without doing any I/O: configuration, request building, retry
decisions, response and problem parsing, the Server-Sent Events parser, the state of a
`wait` and the file names of a download. Nothing here touches a socket or a file
(`Settings` reads the environment): the clients send, and `_files` reads and writes the
local files."""

from __future__ import annotations

import email.utils
import inspect
import json
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlsplit

import httpx
from pydantic import BaseModel

from mifo_client import errors
from mifo_client.models import Concept, ConceptCreated, ConceptsPage, Job, JobsPage

log = logging.getLogger("mifo_client")
T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"  # `mifo serve`
RETRY_STATUSES = frozenset({429, 502, 503, 504})
VERSION = "0.1.0"

Part = tuple[str, tuple[str, bytes, str]]  # a multipart part: (field, (name, bytes, type))
FieldPart = tuple[str, tuple[None, bytes]]  # a multipart form field: (field, (None, value))
JobRef = Job | ConceptCreated | str | uuid.UUID
ConceptRef = Concept | ConceptCreated | str | uuid.UUID


# --- requests --------------------------------------------------------------------------


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer; sent again as is on a retry (the same
    Idempotency-Key, the same bytes)."""

    method: str
    url: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | list[tuple[str, Any]] | None = None
    json: Any = None
    data: Mapping[str, str] | None = None
    files: Sequence[Part | FieldPart] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: bool = True  # download links are signed: they go out without the API key
    timeout: float | None = None  # seconds of reading; None: the client's own

    def request_args(self, auth_headers: Mapping[str, str]) -> dict[str, Any]:
        headers = {**(auth_headers if self.auth else {}), **self.headers}
        args: dict[str, Any] = {"headers": headers}
        for name in ("params", "json", "data", "files", "timeout"):
            if getattr(self, name) is not None:
                args[name] = getattr(self, name)
        return {"method": self.method, "url": self.url, **args}

    def finish(self, response: httpx.Response, unsure: bool = False) -> T:
        """The parsed answer, or the problem raised as its exception. `unsure`: an earlier
        try may have been carried out (outcome_unknown); a DELETE that then finds nothing
        was done by it, so what was asked for is true and it is no error."""
        if self.method == "DELETE" and unsure and response.status_code == 404:
            return self.parse(response)
        if response.status_code >= 400:
            raise problem(response)
        return self.parse(response)

    def follow(self, next_url: str) -> Call[T]:
        """The call for the page a list answer names in `next`: the same path on this
        client's base URL, the next page's query."""
        return replace(self, params=parse_qsl(urlsplit(next_url).query))


def _model(cls: type[BaseModel]) -> Callable[[httpx.Response], Any]:
    return lambda response: cls.model_validate_json(response.content)


def _nothing(response: httpx.Response) -> None:
    return None


def _content(response: httpx.Response) -> bytes:
    return response.content


def _post_headers(key: str | None, wait: int | None = None) -> dict[str, str]:
    headers = {"Idempotency-Key": key or str(uuid.uuid4())}
    if wait is not None:
        headers["Prefer"] = f"wait={wait}"
    return headers


MAX_WAIT = 60  # seconds: the most the service waits for a job before answering (Prefer)
WAIT_MARGIN = 15.0  # seconds a waiting POST may take beyond its wait (storing the upload)


def _wait(wait: float | None) -> tuple[int | None, float | None]:
    """The whole seconds to ask the service to wait, and the read timeout that allows them."""
    if wait is None:
        return None, None
    if not 0 <= wait <= MAX_WAIT:
        raise ValueError(f"wait={wait}: the service waits 0 to {MAX_WAIT} s; use wait() beyond")
    seconds = math.ceil(wait)
    return seconds, seconds + WAIT_MARGIN


def job_id(job: JobRef) -> str:
    if isinstance(job, ConceptCreated):
        return job.job.id
    return job.id if isinstance(job, Job) else str(job)


def concept_id(concept: ConceptRef) -> str:
    if isinstance(concept, ConceptCreated):
        return concept.concept.id
    return concept.id if isinstance(concept, Concept) else str(concept)


class Builder:
    """The calls of the API, one method each; the clients send them."""

    def learn_call(
        self,
        files: list[Part],
        *,
        names: Iterable[str] | str | None,
        options: Mapping[str, Any] | None,
        webhook_url: str | None,
        webhook_events: Iterable[str] | None,
        idempotency_key: str | None,
        wait: float | None = None,
    ) -> Call[ConceptCreated]:
        """`files`: the image and the masks, read already (`_files.uploads`)."""
        data: dict[str, str] = {}
        if names is not None:
            data["names"] = names if isinstance(names, str) else ",".join(names)
        if options is not None:
            data["options"] = json.dumps(dict(options))
        if webhook_url is not None:
            data["webhook_url"] = webhook_url
        if webhook_events is not None:
            data["webhook_events"] = ",".join(webhook_events)
        seconds, timeout = _wait(wait)
        return Call(
            "POST",
            "/v1/concepts",
            _model(ConceptCreated),
            data=data,
            files=files,
            headers=_post_headers(idempotency_key, seconds),
            timeout=timeout,
        )

    def synthesize_call(
        self,
        concept: ConceptRef,
        body: dict[str, Any],
        idempotency_key: str | None,
        wait: float | None = None,
    ) -> Call[Job]:
        return self._concept_job_call(concept, "syntheses", body, idempotency_key, wait)

    def evaluate_call(
        self,
        concept: ConceptRef,
        body: dict[str, Any],
        idempotency_key: str | None,
        wait: float | None = None,
    ) -> Call[Job]:
        return self._concept_job_call(concept, "evaluations", body, idempotency_key, wait)

    def _concept_job_call(
        self,
        concept: ConceptRef,
        collection: str,
        body: dict[str, Any],
        idempotency_key: str | None,
        wait: float | None,
    ) -> Call[Job]:
        """A JSON POST creating a job on a concept (`syntheses`, `evaluations`); fields left
        None are not sent, so the service's defaults apply."""
        seconds, timeout = _wait(wait)
        return Call(
            "POST",
            f"/v1/concepts/{concept_id(concept)}/{collection}",
            _model(Job),
            json={k: v for k, v in body.items() if v is not None},
            headers=_post_headers(idempotency_key, seconds),
            timeout=timeout,
        )

    def segment_call(
        self,
        form: Mapping[str, str],
        image: Part | None,
        idempotency_key: str | None,
        wait: float | None,
    ) -> Call[Job]:
        """POST /v1/segmentations: the form fields and the image (None: `image_id` names a
        stored one), as multipart either way."""
        parts: list[Part | FieldPart] = [(k, (None, v.encode())) for k, v in form.items()]
        if image is not None:
            parts.append(image)
        seconds, timeout = _wait(wait)
        return Call(
            "POST",
            "/v1/segmentations",
            _model(Job),
            files=parts,
            headers=_post_headers(idempotency_key, seconds),
            timeout=timeout,
        )

    def job_call(self, job: JobRef) -> Call[Job]:
        return Call("GET", f"/v1/jobs/{job_id(job)}", _model(Job))

    def cancel_call(self, job: JobRef) -> Call[Job]:
        url = f"/v1/jobs/{job_id(job)}/cancel"
        return Call("POST", url, _model(Job), headers=_post_headers(None))

    def concept_call(self, concept: ConceptRef) -> Call[Concept]:
        return Call("GET", f"/v1/concepts/{concept_id(concept)}", _model(Concept))

    def delete_concept_call(self, concept: ConceptRef) -> Call[None]:
        return Call("DELETE", f"/v1/concepts/{concept_id(concept)}", _nothing)

    def concepts_call(self, limit: int, offset: int) -> Call[ConceptsPage]:
        params = [("limit", limit), ("offset", offset)]
        return Call("GET", "/v1/concepts", _model(ConceptsPage), params=params)

    def jobs_call(
        self,
        status: str | Iterable[str] | None,
        kind: str | None,
        concept: ConceptRef | None,
        limit: int,
        offset: int,
    ) -> Call[JobsPage]:
        params: list[tuple[str, Any]] = [("limit", limit), ("offset", offset)]
        statuses = [status] if isinstance(status, str) else list(status or [])
        params += [("status", s) for s in statuses]
        if kind is not None:
            params.append(("kind", kind))
        if concept is not None:
            params.append(("concept_id", concept_id(concept)))
        return Call("GET", "/v1/jobs", _model(JobsPage), params=params)

    def webhook_secret_call(self) -> Call[str]:
        return Call("GET", "/v1/webhook-secret", lambda r: str(r.json()["secret"]))

    def file_call(self, url: str) -> Call[bytes]:
        return Call("GET", url, _content, auth=False)


def synthesis_body(args: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a synthesis from the method's arguments (None: the server's default)."""
    names = ("prompt", "num_images", "seed", "steps", "guidance_scale", "box_control", "evaluate")
    body = {name: args[name] for name in names}
    boxes = args["boxes"]
    body["boxes"] = {k: list(v) for k, v in (boxes or {}).items()}
    body["options"] = dict(args["options"]) if args["options"] is not None else None
    body["webhook_url"] = args["webhook_url"]
    events = args["webhook_events"]
    body["webhook_events"] = list(events) if events is not None else None
    return body


def evaluation_body(args: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of an evaluation from the method's arguments (None: the server's
    default; no prompts: the paper's ten templates)."""
    prompts = args["prompts"]
    if isinstance(prompts, str):  # one prompt, not its characters
        prompts = [prompts]
    events = args["webhook_events"]
    return {
        "prompts": list(prompts) if prompts is not None else None,
        "images_per_prompt": args["images_per_prompt"],
        "steps": args["steps"],
        "seed": args["seed"],
        "webhook_url": args["webhook_url"],
        "webhook_events": list(events) if events is not None else None,
    }


Points = Iterable[Iterable[float]]


def instance_prompts(
    points: Iterable[Points | None] | None,
    labels: Iterable[Iterable[int] | None] | None,
    boxes: Iterable[Iterable[float] | None] | None,
) -> list[dict[str, Any]]:
    """The `prompts` of a segmentation: instance i takes entry i of each list (None, or a
    shorter list: none of that for it); its points [[x, y], ...], their labels (1 include,
    0 exclude; all 1 when left out) and its box [x0, y0, x1, y1], in the image's pixels."""
    columns: list[list[Any]] = [list(c) if c is not None else [] for c in (points, labels, boxes)]
    prompts: list[dict[str, Any]] = []
    for i in range(max(len(c) for c in columns)):
        prompt: dict[str, Any] = {}
        for name, column in zip(("points", "labels", "box"), columns, strict=True):
            value = column[i] if i < len(column) else None
            if value is not None:
                prompt[name] = [list(p) for p in value] if name == "points" else list(value)
        prompts.append(prompt)
    return prompts


def segment_form(
    image_id: str | None, prompts: list[dict[str, Any]] | None, options: Mapping[str, Any] | None
) -> dict[str, str]:
    """The form fields of a segmentation: mode `prompts` with `prompts`, else `proposals`."""
    form = {"image_id": image_id} if image_id is not None else {}
    if prompts is not None:
        return form | {"mode": "prompts", "prompts": json.dumps(prompts)}
    form["mode"] = "proposals"
    if options is not None:
        form["options"] = json.dumps(dict(options))
    return form


# --- answers -----------------------------------------------------------------------------


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def problem(response: httpx.Response) -> errors.MifoError:
    """The exception for a 4xx/5xx answer, from its problem JSON when it has one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"detail": response.text[:500] or response.reason_phrase}
    status = response.status_code
    return errors.error_class(status, body.get("type"))(
        str(body.get("detail") or body.get("title") or response.reason_phrase),
        type=body.get("type"),
        status=status,
        title=body.get("title") or response.reason_phrase,
        instance=body.get("instance"),
        field=body.get("field"),
        fix=body.get("fix"),
        retry_after=retry_after(response),
        body=body,
    )


def _key_in_use(response: httpx.Response) -> bool:
    """409 idempotency_key_in_use: the first try of this POST is still being handled."""
    if response.status_code != 409:
        return False
    try:
        return str(response.json().get("type", "")).endswith("idempotency_key_in_use")
    except (ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class Retry:
    """Bounded retries with exponential backoff and full jitter; a Retry-After the server
    sends is waited for instead (up to `max_retry_after`)."""

    retries: int = 3  # tries after the first one
    backoff: float = 0.5  # the first pause, doubled after each try
    max_backoff: float = 30.0
    max_retry_after: float = 120.0

    def pause(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before try `attempt + 2`, or None: do not try again. `response`
        None: the try got no answer (a connection error)."""
        if attempt >= self.retries:
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUSES and not _key_in_use(response):
                return None
            asked = retry_after(response)
            if asked is not None:
                return min(asked, self.max_retry_after)
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))


def outcome_unknown(failed: httpx.TransportError | httpx.Response) -> bool:
    """Whether a try that failed so may still have been carried out by the service: its
    answer was lost on the way back (not a refused or timed-out connection, after which
    nothing was sent), or a gateway gave up waiting for it (502, 504)."""
    if isinstance(failed, httpx.Response):
        return failed.status_code in (502, 504)
    return not isinstance(failed, httpx.ConnectError | httpx.ConnectTimeout)


def log_retry(call: Call[Any], attempt: int, pause: float, why: str) -> None:
    log.info("%s %s: %s; try %d in %.2f s", call.method, call.url, why, attempt + 2, pause)


def gave_up(call: Call[Any], exc: httpx.TransportError, tries: int) -> errors.MifoError:
    return errors.MifoConnectionError(
        f"{call.method} {call.url}: no answer after {tries} tries: {exc!r}",
        title="Connection failed",
        fix="check that the service runs at the base URL (MIFO_API_URL)",
    )


# --- configuration -----------------------------------------------------------------------


class Settings:
    """The parts both clients share: where the service is, the key, the retry policy."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        poll_interval: float,
    ) -> None:
        self.base_url = (base_url or os.environ.get("MIFO_API_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("MIFO_API_KEY") or None
        self.timeout = timeout
        self.retry = Retry(retries=retries, backoff=backoff, max_backoff=max_backoff)
        self.poll_interval = poll_interval

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def http_args(self, transport: Any) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "timeout": self.timeout,
            "follow_redirects": True,  # downloads may redirect to presigned storage URLs
            "headers": {"User-Agent": f"mifo-client/{VERSION}"},
            "transport": transport,
        }


# --- waiting -----------------------------------------------------------------------------


@dataclass
class Event:
    event: str
    data: str
    id: str | None


class SseParser:
    """Server-Sent Events, line by line: an event ends at an empty line."""

    def __init__(self) -> None:
        self._event: str
        self._id: str | None
        self._event, self._id = "message", None
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._event = "message"
                return None
            done = Event(self._event, "\n".join(self._data), self._id)
            self._event, self._data = "message", []
            return done
        if line.startswith(":"):  # a comment: the keep-alive
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


class StreamFailed(Exception):
    """The event stream cannot be used: wait polls instead."""


def is_event_stream(response: httpx.Response) -> bool:
    kind = response.headers.get("content-type", "")
    return response.status_code == 200 and kind.startswith("text/event-stream")


def stream_refusal(response: httpx.Response) -> Exception:
    """What to raise for an answer to the stream's request that is no event stream (its body
    read): a refusal polling would meet too (401, 403, 404) as its problem, else StreamFailed
    (wait polls)."""
    if response.status_code in (401, 403, 404):
        return problem(response)
    kind = response.headers.get("content-type", "")
    return StreamFailed(f"{response.status_code} {kind}")


class Waiter:
    """The state of one `wait`: the deadline, the stream being parsed, the last job reported
    to `on_progress`."""

    def __init__(
        self,
        job: JobRef,
        timeout: float | None,
        poll_interval: float,
        on_progress: Callable[[Job], object] | None,
    ) -> None:
        self.job_id = job_id(job)
        self.events_url = f"/v1/jobs/{self.job_id}/events"
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.poll_interval = poll_interval
        self.on_progress = on_progress
        self.parser = SseParser()
        self._last: Any = None

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        left = self.left()
        if left is not None and left <= 0:
            raise errors.WaitTimeoutError(
                f"job {self.job_id} did not finish within {self.timeout} s; it goes on",
                title="Wait timed out",
                fix="wait again, or cancel the job",
            )

    def stream_timeout(self, timeout: float) -> httpx.Timeout:
        """Reads wait for keep-alives (sent every few seconds) up to the deadline."""
        left = self.left()
        read = 60.0 if left is None else max(0.1, min(60.0, left))
        return httpx.Timeout(timeout, read=read)

    def feed(self, line: str) -> Job | None:
        """The job an event carried, once it is complete."""
        event = self.parser.feed(line)
        self.check()
        if event is None:
            return None
        if event.event == "deleted":
            raise errors.NotFoundError(
                f"job {self.job_id} was deleted with its concept",
                type="/problems/not_found",
                status=404,
                title="Job deleted",
            )
        if event.event not in ("status", "progress"):
            return None
        return Job.model_validate_json(event.data)

    def changed(self, job: Job) -> bool:
        """True when the job's status, progress or place in its queue differs from the last
        one reported (the estimate drifting alone is no change)."""
        place = (job.queue.position, job.queue.ahead) if job.queue is not None else None
        key = (job.status, job.progress.model_dump(), place)
        if key == self._last:
            return False
        self._last = key
        return True

    def report(self, job: Job) -> None:
        """`on_progress(job)` if the job changed since the last report."""
        if self.changed(job) and self.on_progress is not None:
            self.on_progress(job)

    async def areport(self, job: Job) -> None:
        """`report` for AsyncClient, whose `on_progress` may be a coroutine function."""
        if self.changed(job) and self.on_progress is not None:
            result = self.on_progress(job)
            if inspect.isawaitable(result):
                await result

    def pause(self) -> float:
        """Seconds until the next poll; WaitTimeoutError once the deadline has passed."""
        self.check()
        left = self.left()
        return self.poll_interval if left is None else max(0.0, min(self.poll_interval, left))


# --- downloads ---------------------------------------------------------------------------


def download_plan(job: Job, previews: bool) -> list[tuple[str, str]]:
    """(url, file name) of each file of a succeeded job: a synthesis' images (and previews),
    a learning job's attention maps, one per token. Names start with the job id."""
    if not job.succeeded or job.result is None:
        raise errors.JobNotSucceededError(
            f"job {job.id} is {job.status}: only a succeeded job has files",
            title="Nothing to download",
            fix="wait for the job to succeed",
        )
    plan: list[tuple[str, str]] = []
    for image in job.result.images or []:
        if image.url:
            plan.append((image.url, f"{job.id}_image_{image.index:02d}.png"))
        if previews and image.preview_url:
            plan.append((image.preview_url, f"{job.id}_preview_{image.index:02d}.png"))
    concept = job.result.concept
    for i, token in enumerate(concept.tokens if concept else []):
        if token.attention_map:
            plan.append((token.attention_map, f"{job.id}_attention_{i:02d}.png"))
    return plan + evaluation_plan(job) + segmentation_plan(job, previews)


def evaluation_plan(job: Job) -> list[tuple[str, str]]:
    """An evaluation's files: evaluation.json, the chart and the images."""
    evaluation = job.result.evaluation if job.result else None
    if evaluation is None:
        return []
    plan = [(evaluation.record.url, f"{job.id}_evaluation.json")] if evaluation.record else []
    if evaluation.chart:
        plan.append((evaluation.chart.url, f"{job.id}_chart.png"))
    plan += [
        (image.url, f"{job.id}_image_{image.index:03d}.png")
        for image in evaluation.images
        if image.url
    ]
    return plan


def segmentation_plan(job: Job, previews: bool) -> list[tuple[str, str]]:
    """A segmentation's masks (`<job id>_mask_00.png`, ...; proposals' `candidate_00`), and
    its overlay with `previews`."""
    found = job.result.segmentation if job.result else None
    if found is None:
        return []
    return [(url, f"{job.id}_{name}") for url, name in mask_plan(job, previews)]


def mask_plan(job: Job, overlay: bool = False) -> list[tuple[str, str]]:
    """(url, file name) of each mask of a succeeded segmentation, in order: `mask_00.png`,
    ... (one per instance), or `candidate_00.png`, ... (proposals, best first): the files
    `learn` and `mifo learn` take; with `overlay`, then `overlay.png`."""
    found = job.result.segmentation if job.succeeded and job.result else None
    if found is None:
        raise errors.JobNotSucceededError(
            f"job {job.id} is a {job.kind} job, {job.status}: only a succeeded segmentation "
            "has masks",
            title="No masks",
            fix="segment first, and wait for the job to succeed",
        )
    stem, masks = (
        ("mask", found.masks) if found.mode == "prompts" else ("candidate", found.candidates)
    )
    if any(m.url is None for m in masks):
        raise errors.JobNotSucceededError(
            f"the masks of job {job.id} were removed (retention)",
            title="Masks expired",
            fix="segment the image again",
        )
    plan = [(str(m.url), f"{stem}_{m.index:02d}.png") for m in masks]
    if overlay and found.overlay_url:
        plan.append((found.overlay_url, "overlay.png"))
    return plan


def export_call(concept: ConceptRef) -> Call[None]:
    """The export's call; its body is sent to a file as it arrives (`into`), never held."""
    return Call("GET", f"/v1/concepts/{concept_id(concept)}/export", _nothing)


def archive_name(concept: ConceptRef) -> str:
    """The file name of a concept's export."""
    return f"concept-{concept_id(concept)}.zip"


CHUNK_BYTES = 1 << 20  # streamed downloads are written a MiB at a time
