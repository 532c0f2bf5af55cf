"""The asyncio client: the blocking client's twin (_sync.py), on the same requests, answers and
errors from _core; only sending, sleeping and reading the stream are awaited here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Generic, Literal, Self, Unpack, overload

import httpx

from daguerre_client import _core
from daguerre_client._core import (
    DEFAULT_TIMEOUT,
    DEFAULT_VIDEO_TIMEOUT,
    Call,
    ControlNet,
    ImageInput,
    ImageOptions,
    R,
    RetryPolicy,
    Submission,
    UpscaleType,
    VideoOptions,
)
from daguerre_client.errors import ConnectionFailed, DaguerreError, RequestTimeout, ServerBusy
from daguerre_client.types import (
    Balance,
    Image,
    InferenceResult,
    JobAccepted,
    JobEvent,
    JobPage,
    JobStatus,
    ModelList,
    UpscaleResult,
    VideoResult,
)


class AsyncJob(Generic[R]):
    """A job submitted with `wait=False`: follow it with `events()`, end it with `cancel()`, or
    block for its result with `wait()`. From a server without jobs (the hosted API) the answer
    was the result itself: `wait()` returns it, and the other methods raise NotSupportedByServer."""

    def __init__(
        self,
        client: AsyncDaguerre,
        inf_id: str,
        queue_position: int,
        parse: Callable[[dict[str, Any]], R],
        result: R | None = None,
    ) -> None:
        self.inf_id = inf_id
        self.queue_position = queue_position
        self._client = client
        self._parse: Callable[[dict[str, Any]], R] = parse
        self._result: R | None = result

    def __repr__(self) -> str:
        return f"AsyncJob({self.inf_id!r}, queue_position={self.queue_position})"

    async def status(self) -> JobStatus:
        return await self._client.job(self.inf_id)

    def events(self, *, last_event_id: str | None = None) -> AsyncIterator[JobEvent]:
        return self._client.stream(self.inf_id, last_event_id=last_event_id)

    async def cancel(self) -> JobStatus:
        return await self._client.cancel(self.inf_id)

    async def wait(self, timeout: float | None = None) -> R:
        """The result, once the job is done; raises the error it failed with (GenerationFailed,
        JobCancelled, ...), or RequestTimeout after `timeout` seconds (the job keeps running)."""
        if self._result is None:
            async for event in self._client._events(self.inf_id, None, timeout):
                if _core.is_final(event):
                    self._result = _core.outcome(event, self._parse)
                    break
        if self._result is None:
            raise ConnectionFailed(f"the events of job {self.inf_id} ended without its result", inf_id=self.inf_id)
        return self._result


class AsyncDaguerre:
    """The asyncio client of a daguerre server, or of the hosted SinkIn API; the same methods as
    Daguerre, awaited (`stream` and `Job.events` are async iterators).

    `base_url` is the server's address (`http://127.0.0.1:8000`, `https://sinkin.ai`); `token` an
    access token. `timeout` bounds each request (a synchronous generation holds its request open
    until the images are made), `video_timeout` a synchronous /api/video request; either is seconds
    or an `httpx.Timeout`. `retry` says how "server busy" answers are retried. Pass `http` to use
    your own `httpx.AsyncClient` (proxies, certificates); it is then yours to close."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        video_timeout: float | httpx.Timeout = DEFAULT_VIDEO_TIMEOUT,
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._requests = _core.Requests(base_url, token)
        self._timeout = httpx.Timeout(timeout)
        self._video_timeout = httpx.Timeout(video_timeout)
        self.retry = retry or RetryPolicy()
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient()
        self._context: dict[str, Any] = {"http": self._http}

    @property
    def base_url(self) -> str:
        return self._requests.base_url

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    # Generation

    @overload
    async def generate(
        self, model_id: str, prompt: str, *, wait: Literal[True] = True, **options: Unpack[ImageOptions]
    ) -> InferenceResult: ...
    @overload
    async def generate(
        self, model_id: str, prompt: str, *, wait: Literal[False], **options: Unpack[ImageOptions]
    ) -> AsyncJob[InferenceResult]: ...
    async def generate(
        self, model_id: str, prompt: str, *, wait: bool = True, **options: Unpack[ImageOptions]
    ) -> InferenceResult | AsyncJob[InferenceResult]:
        """Text to image (POST /api/inference)."""
        return await self._submit(self._requests.inference(model_id, prompt, options, run_async=not wait), wait)

    @overload
    async def img2img(
        self,
        model_id: str,
        prompt: str,
        image: ImageInput,
        *,
        image_strength: float | None = None,
        wait: Literal[True] = True,
        **options: Unpack[ImageOptions],
    ) -> InferenceResult: ...
    @overload
    async def img2img(
        self,
        model_id: str,
        prompt: str,
        image: ImageInput,
        *,
        image_strength: float | None = None,
        wait: Literal[False],
        **options: Unpack[ImageOptions],
    ) -> AsyncJob[InferenceResult]: ...
    async def img2img(
        self,
        model_id: str,
        prompt: str,
        image: ImageInput,
        *,
        image_strength: float | None = None,
        wait: bool = True,
        **options: Unpack[ImageOptions],
    ) -> InferenceResult | AsyncJob[InferenceResult]:
        """Image to image: `image` (bytes, a path, a binary file or an Image) transformed by
        `image_strength` (0 keeps it, 1 ignores it)."""
        call = self._requests.inference(
            model_id,
            prompt,
            options,
            run_async=not wait,
            image=await self._upload(image),
            extra={"image_strength": image_strength},
        )
        return await self._submit(call, wait)

    @overload
    async def controlnet(
        self,
        model_id: str,
        prompt: str,
        image: ImageInput,
        controlnet: ControlNet,
        *,
        preprocess: bool | None = None,
        wait: Literal[True] = True,
        **options: Unpack[ImageOptions],
    ) -> InferenceResult: ...
    @overload
    async def controlnet(
        self,
        model_id: str,
        prompt: str,
        image: ImageInput,
        controlnet: ControlNet,
        *,
        preprocess: bool | None = None,
        wait: Literal[False],
        **options: Unpack[ImageOptions],
    ) -> AsyncJob[InferenceResult]: ...
    async def controlnet(
        self,
        model_id: str,
        prompt: str,
        image: ImageInput,
        controlnet: ControlNet,
        *,
        preprocess: bool | None = None,
        wait: bool = True,
        **options: Unpack[ImageOptions],
    ) -> InferenceResult | AsyncJob[InferenceResult]:
        """ControlNet: the control map is made from `image` (canny edges, depth, pose), or is
        `image` itself with `preprocess=False`; the answer's `control_image` is the map used."""
        extra = {"controlnet": controlnet, "controlnet_preprocess": preprocess}
        call = self._requests.inference(
            model_id, prompt, options, run_async=not wait, image=await self._upload(image), extra=extra
        )
        return await self._submit(call, wait)

    @overload
    async def upscale(
        self,
        image: Image | str,
        *,
        inf_id: str | None = None,
        type: UpscaleType = "esrgan",
        scale: float | None = None,
        strength: float | None = None,
        webhook_url: str | None = None,
        wait: Literal[True] = True,
    ) -> UpscaleResult: ...
    @overload
    async def upscale(
        self,
        image: Image | str,
        *,
        inf_id: str | None = None,
        type: UpscaleType = "esrgan",
        scale: float | None = None,
        strength: float | None = None,
        webhook_url: str | None = None,
        wait: Literal[False],
    ) -> AsyncJob[UpscaleResult]: ...
    async def upscale(
        self,
        image: Image | str,
        *,
        inf_id: str | None = None,
        type: UpscaleType = "esrgan",
        scale: float | None = None,
        strength: float | None = None,
        webhook_url: str | None = None,
        wait: bool = True,
    ) -> UpscaleResult | AsyncJob[UpscaleResult]:
        """ESRGAN (`scale` 2 to 4) or hires fix (`strength`) of an image a result gave; a URL
        string needs the `inf_id` of the inference that made it."""
        call = self._requests.upscale(image, inf_id, type, scale, strength, webhook_url, run_async=not wait)
        return await self._submit(call, wait)

    @overload
    async def video(
        self,
        model_id: str,
        prompt: str,
        *,
        image_url: Image | str | None = None,
        wait: Literal[True] = True,
        **options: Unpack[VideoOptions],
    ) -> VideoResult: ...
    @overload
    async def video(
        self,
        model_id: str,
        prompt: str,
        *,
        image_url: Image | str | None = None,
        wait: Literal[False],
        **options: Unpack[VideoOptions],
    ) -> AsyncJob[VideoResult]: ...
    async def video(
        self,
        model_id: str,
        prompt: str,
        *,
        image_url: Image | str | None = None,
        wait: bool = True,
        **options: Unpack[VideoOptions],
    ) -> VideoResult | AsyncJob[VideoResult]:
        """Text to video, or image to video with `image_url` (an Image, or a URL)."""
        return await self._submit(self._requests.video(model_id, prompt, image_url, options, run_async=not wait), wait)

    # The catalog, the account and jobs

    async def models(self) -> ModelList:
        return await self._send(self._requests.models())

    async def balance(self) -> Balance:
        """The token's credits (a daguerre addition)."""
        return await self._send(self._requests.balance())

    async def job(self, inf_id: str) -> JobStatus:
        return await self._send(self._requests.job(inf_id))

    async def jobs(self, *, limit: int | None = None, before: str | None = None) -> JobPage:
        """The token's jobs, newest first; `before` is the previous page's `next_before`."""
        return await self._send(self._requests.jobs(limit, before))

    async def cancel(self, inf_id: str) -> JobStatus:
        """Cancels a queued or running job; its credits come back. Its status, now ended."""
        return await self._send(self._requests.cancel(inf_id))

    def stream(self, inf_id: str, *, last_event_id: str | None = None) -> AsyncIterator[JobEvent]:
        """The job's events (Queued, Started, Progress, then one of Finished, Failed, Cancelled),
        resumed after `last_event_id` when given; it ends after the final event."""
        return self._events(inf_id, last_event_id)

    # Transport

    async def _upload(self, image: ImageInput) -> tuple[str, bytes, str]:
        return _core.upload(await image.download_async() if isinstance(image, Image) else image)

    async def _submit(self, submission: Submission[R], wait: bool) -> R | AsyncJob[R]:
        answer = await self._send(submission.call)
        if isinstance(answer, JobAccepted):
            return AsyncJob(self, answer.inf_id, answer.queue_position, submission.reader(self._context))
        if wait:
            return answer
        return AsyncJob(self, answer.inf_id or "", 0, submission.reader(self._context), answer)

    async def _send(self, call: Call[_core.T]) -> _core.T:
        timeout = self._video_timeout if call.video else self._timeout
        attempt = 1
        while True:
            request = self._requests.build(self._http, call, timeout)
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                raise _core.transport_error(exc, call.path, timeout) from exc
            try:
                return call.parse(_core.body_of(response, call.path), self._context)
            except ServerBusy as busy:
                delay = _core.busy_delay(self.retry, busy, attempt, call.path)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def _events(
        self, inf_id: str, last_event_id: str | None, timeout: float | None = None
    ) -> AsyncIterator[JobEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        reader = _core.EventReader(last_event_id)
        path = self._requests.events_path(inf_id)
        for reconnect in range(_core.MAX_RECONNECTS + 1):
            if reader.last_event_id == _core.FINAL_EVENT_ID:
                return  # the final event was had (here, or by the caller who resumes after it)
            if reconnect:
                await asyncio.sleep(_core.RECONNECT_DELAY_S)
            request = self._requests.stream_request(self._http, inf_id, reader.last_event_id, self._timeout)
            try:
                response = await self._http.send(request, stream=True)
                try:
                    if not _core.is_event_stream(response):
                        await response.aread()
                        _core.body_of(response, path)
                        raise DaguerreError(f"{path} answered without an event stream", inf_id=inf_id)
                    async for line in response.aiter_lines():
                        if deadline is not None and time.monotonic() > deadline:
                            raise RequestTimeout(_core.still_running(inf_id, timeout), inf_id=inf_id)
                        event = reader.feed(line)
                        if event is not None:
                            yield event
                            if _core.is_final(event):
                                return
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                # A stream cut short (a proxy, a restart) resumes after its last event; no answer
                # within the timeout does not.
                if isinstance(exc, httpx.TimeoutException) or reconnect == _core.MAX_RECONNECTS:
                    raise _core.transport_error(exc, path, self._timeout) from exc
        raise ConnectionFailed(f"{path}: the stream ended {_core.MAX_RECONNECTS + 1} times before the job's last event")
