"""The methods of the MIFO API over httpx, with retries. async_client.py is the one source of
both clients: `AsyncClient`, and `Client` in client.py, which scripts/unasync_client.py writes
from it. `_core` builds the calls and decides the retries; `_files` reads and writes the local
files."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from mifo_client import _core, _files
from mifo_client._core import ConceptRef, JobRef
from mifo_client._files import FileInput
from mifo_client.models import Concept, ConceptCreated, ConceptsPage, Job, JobsPage

T = TypeVar("T")


class AsyncClient(_core.Builder):
    """A MIFO service. `base_url` defaults to MIFO_API_URL (else http://127.0.0.1:8000),
    `api_key` to MIFO_API_KEY (none is needed on a loopback `mifo serve`).

    Every request is tried up to `retries` more times on a connection error, 429, 502, 503
    and 504, waiting for Retry-After when the server sends one, else backing off
    exponentially from `backoff` seconds. Every POST carries an Idempotency-Key, the same on
    each try, so a retried POST never makes a second job."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        poll_interval: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = _core.Settings(
            base_url, api_key, timeout, retries, backoff, max_backoff, poll_interval
        )
        self.base_url = self.settings.base_url
        self._http = httpx.AsyncClient(**self.settings.http_args(transport))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _core.Call[T], into: Path | None = None) -> T:
        """Send `call` with retries; `into`: stream a successful body into that file."""
        retry, attempt, unsure = self.settings.retry, 0, False
        while True:
            try:
                response = await self._try(call, into)
            except httpx.TransportError as exc:
                pause = retry.pause(attempt, None)
                if pause is None:
                    raise _core.gave_up(call, exc, attempt + 1) from exc
                why = repr(exc)
                unsure = unsure or _core.outcome_unknown(exc)
            else:
                pause = retry.pause(attempt, response)
                if pause is None:
                    return call.finish(response, unsure)
                why = f"answered {response.status_code}"
                unsure = unsure or _core.outcome_unknown(response)
            _core.log_retry(call, attempt, pause, why)
            await asyncio.sleep(pause)
            attempt += 1

    async def _try(self, call: _core.Call[Any], into: Path | None) -> httpx.Response:
        """One try of `call`. With `into`, a successful body is written to that file as it
        arrives (any other body is read, for its problem)."""
        args = call.request_args(self.settings.auth_headers())
        if into is None:
            return await self._http.request(**args)
        async with self._http.stream(**args) as response:
            if response.is_success:
                with into.open("wb") as out:
                    async for chunk in response.aiter_bytes(_core.CHUNK_BYTES):
                        out.write(chunk)
            else:
                await response.aread()
        return response

    # --- concepts ------------------------------------------------------------------------

    async def learn(
        self,
        image: FileInput,
        masks: Iterable[FileInput],
        *,
        names: Iterable[str] | str | None = None,
        options: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        webhook_events: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> ConceptCreated:
        """Upload a scene and one mask per instance (paths, bytes or binary files) and queue
        the learning job. `wait(created)` waits for it; `wait=N` (at most 60 s) has the
        service answer once the job ends or after N seconds, whichever comes first."""
        return await self._send(
            self.learn_call(
                _files.uploads(image, masks),  # read once: every try sends the same bytes
                names=names,
                options=options,
                webhook_url=webhook_url,
                webhook_events=webhook_events,
                idempotency_key=idempotency_key,
                wait=wait,
            )
        )

    async def concept(self, concept: ConceptRef) -> Concept:
        return await self._send(self.concept_call(concept))

    async def delete_concept(self, concept: ConceptRef) -> None:
        """Delete a concept, its files and its jobs (unfinished ones are canceled)."""
        await self._send(self.delete_concept_call(concept))

    async def concepts_page(self, limit: int = 20, offset: int = 0) -> ConceptsPage:
        return await self._send(self.concepts_call(limit, offset))

    def concepts(self, page_size: int = 100) -> AsyncIterator[Concept]:
        """Every concept, newest first, page after page."""
        return self._pages(self.concepts_call(page_size, 0))

    # --- jobs ----------------------------------------------------------------------------

    async def synthesize(
        self,
        concept: ConceptRef,
        prompt: str,
        boxes: Mapping[str, Iterable[float]] | None = None,
        *,
        num_images: int | None = None,
        seed: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        box_control: bool | None = None,
        evaluate: bool | None = None,
        options: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        webhook_events: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> Job:
        """Queue a synthesis of a ready concept: `boxes` maps each token (`<asset0>`) or
        instance name to [x0, y0, x1, y1] as image fractions. Unset options take the
        server's defaults. `evaluate=True` scores each image (its `metrics`: SIM-C, and
        SIM-D, NSIM-D and CS per subject). `wait=N` (at most 60 s): the answer comes once the
        job ends (the finished job) or after N seconds (the job as it is then)."""
        body = _core.synthesis_body(locals())
        return await self._send(self.synthesize_call(concept, body, idempotency_key, wait))

    async def evaluate(
        self,
        concept: ConceptRef,
        prompts: Iterable[str] | None = None,
        *,
        images_per_prompt: int | None = None,
        steps: int | None = None,
        seed: int | None = None,
        webhook_url: str | None = None,
        webhook_events: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> Job:
        """Queue an evaluation of a ready concept: each prompt (a template with `{token}`,
        run once per instance, or naming the concept's tokens) synthesised with one box per
        instance, every image scored. No prompts: the paper's ten templates. Unset numbers
        take the server's defaults (2 images per prompt, 50 steps, seed 0). The finished
        job's `result.evaluation` holds the metrics per token (SIM-C, SIM-D, NSIM-D, CS)
        and their mean, each image's scores and the chart; `download` saves the files."""
        body = _core.evaluation_body(locals())
        return await self._send(self.evaluate_call(concept, body, idempotency_key, wait))

    # --- segmentations -------------------------------------------------------------------

    async def segment(
        self,
        image: FileInput | None = None,
        *,
        image_id: str | None = None,
        points: Iterable[_core.Points | None] | None = None,
        labels: Iterable[Iterable[int] | None] | None = None,
        boxes: Iterable[Iterable[float] | None] | None = None,
        idempotency_key: str | None = None,
        wait: float = 30.0,
        timeout: float | None = None,
    ) -> Job:
        """Masks from clicks: one mask per instance, instance i taking entry i of `points`
        ([[x, y], ...] in the image's pixels), `labels` (1 include, 0 exclude; all 1 when
        left out) and `boxes` ([x0, y0, x1, y1] in pixels). Give the image (a path, bytes or
        a binary file) the first time, then `image_id=job.result.segmentation.image_id`:
        nothing is uploaded again and the service reuses the image's embedding. Returns the
        finished job: the service answers once it ended (`wait`, at most 60 s), and one still
        going then is followed to its end (`timeout`). Its `result.segmentation` holds the
        masks; `download_masks` saves them for `learn`."""
        prompts = _core.instance_prompts(points, labels, boxes)
        form = _core.segment_form(image_id, prompts, None)
        return await self._segmented(image, form, idempotency_key, wait, timeout)

    async def propose(
        self,
        image: FileInput | None = None,
        *,
        image_id: str | None = None,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        wait: float = 30.0,
        timeout: float | None = None,
    ) -> Job:
        """Find instances without clicks: the finished job's `result.segmentation.candidates`,
        best first, each with its mask's `url`, `score` and `box`. `options`: proposal
        settings (points_per_side, max_proposals, min_predicted_iou, ...). The image or its
        `image_id`, `wait` and `timeout` as for `segment`."""
        form = _core.segment_form(image_id, None, options)
        return await self._segmented(image, form, idempotency_key, wait, timeout)

    async def _segmented(
        self,
        image: FileInput | None,
        form: dict[str, str],
        idempotency_key: str | None,
        wait: float,
        timeout: float | None,
    ) -> Job:
        part = None if image is None else _files.upload("image", image, "image")
        job = await self._send(self.segment_call(form, part, idempotency_key, wait))
        return job if job.done else await self.wait(job, timeout)

    async def download_masks(
        self, job: JobRef, folder: str | Path, *, overwrite: bool = True, overlay: bool = False
    ) -> list[Path]:
        """Save a succeeded segmentation's masks into `folder` as `mask_00.png`, ... (one per
        instance, in order; `propose`'s: `candidate_00.png`, ..., best first): the paths, in
        order, ready for `learn`; with `overlay`, `overlay.png` last. JobNotSucceededError
        for another job or expired masks; `overwrite` as for `download`."""
        plan = _core.mask_plan(await self.job(job), overlay)  # fresh links
        target = _files.folder(folder)
        if not overwrite:
            _files.check_free(target, [name for _, name in plan])
        saved = []
        for url, name in plan:
            data = await self._send(self.file_call(url))
            saved.append(_files.save(target, name, data, overwrite=overwrite))
        return saved

    async def job(self, job: JobRef) -> Job:
        return await self._send(self.job_call(job))

    async def cancel(self, job: JobRef) -> Job:
        """Cancel a queued job at once, or ask a running one to stop at its next step."""
        return await self._send(self.cancel_call(job))

    async def jobs_page(
        self,
        status: str | Iterable[str] | None = None,
        *,
        kind: str | None = None,
        concept: ConceptRef | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> JobsPage:
        return await self._send(self.jobs_call(status, kind, concept, limit, offset))

    def jobs(
        self,
        status: str | Iterable[str] | None = None,
        *,
        kind: str | None = None,
        concept: ConceptRef | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Job]:
        """Every job matching the filters, newest first, page after page."""
        return self._pages(self.jobs_call(status, kind, concept, page_size, 0))

    async def _pages(self, call: _core.Call[Any]) -> AsyncIterator[Any]:
        page = await self._send(call)
        for item in page.data:
            yield item
        while page.next:
            page = await self._send(call.follow(page.next))
            for item in page.data:
                yield item

    async def wait(
        self,
        job: JobRef,
        timeout: float | None = None,
        on_progress: Callable[[Job], object] | None = None,
    ) -> Job:
        """The job once it has succeeded, failed or been canceled (check `job.status`).

        Follows the job's event stream, calling `on_progress(job)` on every change of status
        or progress (AsyncClient's may be a coroutine function too); polls every
        `poll_interval` seconds if the stream fails. Raises WaitTimeoutError after `timeout`
        seconds, NotFoundError if the job is deleted."""
        w = _core.Waiter(job, timeout, self.settings.poll_interval, on_progress)
        with contextlib.suppress(httpx.TransportError, _core.StreamFailed):
            done = await self._stream(w)
            if done is not None:
                return done
        while True:
            found = await self.job(w.job_id)
            await w.areport(found)
            if found.done:
                return found
            await asyncio.sleep(w.pause())

    async def _stream(self, w: _core.Waiter) -> Job | None:
        """The finished job from its event stream; None if the stream ended first."""
        timeout = w.stream_timeout(self.settings.timeout)
        headers = self.settings.auth_headers()
        async with self._http.stream("GET", w.events_url, headers=headers, timeout=timeout) as r:
            if not _core.is_event_stream(r):
                await r.aread()
                raise _core.stream_refusal(r)
            async for line in r.aiter_lines():
                found = w.feed(line)
                if found is not None:
                    await w.areport(found)
                    if found.done:
                        return found
        return None  # the stream ended early: poll

    # --- files ---------------------------------------------------------------------------

    async def download(
        self, job: JobRef, folder: str | Path, *, previews: bool = False, overwrite: bool = True
    ) -> list[Path]:
        """Save the files of a succeeded job into `folder`: a synthesis' images
        (`<job id>_image_00.png`, ..., and `<job id>_preview_00.png` with `previews`), a
        learning job's attention maps (`<job id>_attention_00.png`, one per token), an
        evaluation's `<job id>_evaluation.json`, `<job id>_chart.png` and images
        (`<job id>_image_000.png`, ...), a segmentation's masks (`<job id>_mask_00.png`, ...,
        and `<job id>_overlay.png` with `previews`). With
        `overwrite=False` a file of that name already there raises FileExistsError, before
        anything is fetched."""
        plan = _core.download_plan(await self.job(job), previews)  # fresh links
        target = _files.folder(folder)
        if not overwrite:
            _files.check_free(target, [name for _, name in plan])
        saved = []
        for url, name in plan:
            data = await self._send(self.file_call(url))
            saved.append(_files.save(target, name, data, overwrite=overwrite))
        return saved

    async def export_concept(self, concept: ConceptRef, folder: str | Path) -> Path:
        """Save a ready concept's export as `concept-<id>.zip` in `folder`: files plain
        diffusers loads (textual inversion, LoRA or full weights) and a README.md with the
        code (GET /v1/concepts/{id}/export; 409 while the concept is not ready)."""
        path = _files.folder(folder) / _core.archive_name(concept)
        with _files.replacing(path) as part:  # streamed to disk: an archive may be gigabytes
            await self._send(_core.export_call(concept), into=part)
        return path

    async def webhook_secret(self) -> str:
        """The secret this tenant's webhooks are signed with (for `verify_webhook`)."""
        return await self._send(self.webhook_secret_call())
