"""The asynchronous client: `Client`'s methods as coroutines (and async iterators for the
lists), over httpx.AsyncClient. Requests, parsing and retry decisions are `_core`'s."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from mifo_client import _core
from mifo_client._core import ConceptRef, FileInput, JobRef
from mifo_client.models import Concept, ConceptCreated, ConceptsPage, Job, JobsPage

T = TypeVar("T")


class AsyncClient(_core.Builder):
    """`Client` for asyncio: the same arguments, defaults, retries and idempotency keys.
    `on_progress` of `wait` may be a plain function or a coroutine function."""

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
                args = call.request_args(self.settings.auth_headers())
                if into is None:
                    response = await self._http.request(**args)
                else:
                    response = await self._fetch(args, into)
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

    async def _fetch(self, args: dict[str, Any], into: Path) -> httpx.Response:
        """The response, its body written to `into` when it succeeded, read otherwise."""
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
        """See `Client.learn`."""
        return await self._send(
            self.learn_call(
                image,
                masks,
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
        await self._send(self.delete_concept_call(concept))

    async def concepts_page(self, limit: int = 20, offset: int = 0) -> ConceptsPage:
        return await self._send(self.concepts_call(limit, offset))

    def concepts(self, page_size: int = 100) -> AsyncIterator[Concept]:
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
        options: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        webhook_events: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> Job:
        """See `Client.synthesize`."""
        body = _core.synthesis_body(locals())
        return await self._send(self.synthesize_call(concept, body, idempotency_key, wait))

    async def job(self, job: JobRef) -> Job:
        return await self._send(self.job_call(job))

    async def cancel(self, job: JobRef) -> Job:
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
        """See `Client.wait`."""
        w = _core.Waiter(job, timeout, self.settings.poll_interval)
        with contextlib.suppress(httpx.TransportError, _core.StreamFailed):
            done = await self._stream(w, on_progress)
            if done is not None:
                return done
        while True:
            found = await self.job(w.job_id)
            await _report(w, found, on_progress)
            if found.done:
                return found
            await asyncio.sleep(w.pause())

    async def _stream(
        self, w: _core.Waiter, on_progress: Callable[[Job], object] | None
    ) -> Job | None:
        timeout = w.stream_timeout(self.settings.timeout)
        headers = self.settings.auth_headers()
        async with self._http.stream("GET", w.events_url, headers=headers, timeout=timeout) as r:
            if r.status_code in (401, 403, 404):
                await r.aread()
            w.opened(r)
            async for line in r.aiter_lines():
                found = w.feed(line)
                if found is None:
                    continue
                await _report(w, found, on_progress)
                if found.done:
                    return found
        return None

    # --- files ---------------------------------------------------------------------------

    async def download(
        self, job: JobRef, folder: str | Path, *, previews: bool = False, overwrite: bool = True
    ) -> list[Path]:
        """See `Client.download`."""
        plan = _core.download_plan(await self.job(job), previews)
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        if not overwrite:
            _core.check_free(target, plan)
        saved = []
        for url, name in plan:
            data = await self._send(self.file_call(url))
            saved.append(_core.save(target, name, data, overwrite=overwrite))
        return saved

    async def export_concept(self, concept: ConceptRef, folder: str | Path) -> Path:
        """See `Client.export_concept`."""
        call, part, path = _core.export_call(concept, folder)
        try:
            await self._send(call, into=part)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return part.replace(path)

    async def webhook_secret(self) -> str:
        return await self._send(self.webhook_secret_call())


async def _report(w: _core.Waiter, job: Job, on_progress: Callable[[Job], object] | None) -> None:
    if w.changed(job) and on_progress is not None:
        result = on_progress(job)
        if inspect.isawaitable(result):
            await result
