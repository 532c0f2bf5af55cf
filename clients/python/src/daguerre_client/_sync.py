"""The blocking client. Its requests, answers and errors are built in _core, shared with the
asyncio client; what is here is sending, sleeping between retries and reading the stream."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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


class Job(Generic[R]):
    """A job submitted with `wait=False`: follow it with `events()`, end it with `cancel()`, or
    block for its result with `wait()`. From a server without jobs (the hosted API) the answer
    was the result itself: `wait()` returns it, and the other methods raise NotSupportedByServer."""

    def __init__(
        self,
        client: Daguerre,
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
        return f"Job({self.inf_id!r}, queue_position={self.queue_position})"

    def status(self) -> JobStatus:
        return self._client.job(self.inf_id)

    def events(self, *, last_event_id: str | None = None) -> Iterator[JobEvent]:
        return self._client.stream(self.inf_id, last_event_id=last_event_id)

    def cancel(self) -> JobStatus:
        return self._client.cancel(self.inf_id)

    def wait(self, timeout: float | None = None) -> R:
        """The result, once the job is done; raises the error it failed with (GenerationFailed,
        JobCancelled, ...), or RequestTimeout after `timeout` seconds (the job keeps running)."""
        if self._result is None:
            for event in self._client._events(self.inf_id, None, timeout):
                if _core.is_final(event):
                    self._result = _core.outcome(event, self._parse)
                    break
        if self._result is None:
            raise ConnectionFailed(f"the events of job {self.inf_id} ended without its result", inf_id=self.inf_id)
        return self._result


class Daguerre:
    """A client of a daguerre server, or of the hosted SinkIn API for the contract's endpoints.

    `base_url` is the server's address (`http://127.0.0.1:8000`, `https://sinkin.ai`); `token` an
    access token. `timeout` bounds each request (a synchronous generation holds its request open
    until the images are made), `video_timeout` a synchronous /api/video request; either is seconds
    or an `httpx.Timeout`. `retry` says how "server busy" answers are retried. Pass `http` to use
    your own `httpx.Client` (proxies, certificates); it is then yours to close."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        video_timeout: float | httpx.Timeout = DEFAULT_VIDEO_TIMEOUT,
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self._requests = _core.Requests(base_url, token)
        self._timeout = httpx.Timeout(timeout)
        self._video_timeout = httpx.Timeout(video_timeout)
        self.retry = retry or RetryPolicy()
        self._owns_http = http is None
        self._http = http or httpx.Client()
        self._context: dict[str, Any] = {"http": self._http}

    @property
    def base_url(self) -> str:
        return self._requests.base_url

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # Generation

    @overload
    def generate(
        self, model_id: str, prompt: str, *, wait: Literal[True] = True, **options: Unpack[ImageOptions]
    ) -> InferenceResult: ...
    @overload
    def generate(
        self, model_id: str, prompt: str, *, wait: Literal[False], **options: Unpack[ImageOptions]
    ) -> Job[InferenceResult]: ...
    def generate(
        self, model_id: str, prompt: str, *, wait: bool = True, **options: Unpack[ImageOptions]
    ) -> InferenceResult | Job[InferenceResult]:
        """Text to image (POST /api/inference)."""
        return self._submit(self._requests.inference(model_id, prompt, options, run_async=not wait), wait)

    @overload
    def img2img(
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
    def img2img(
        self,
        model_id: str,
        prompt: str,
        image: ImageInput,
        *,
        image_strength: float | None = None,
        wait: Literal[False],
        **options: Unpack[ImageOptions],
    ) -> Job[InferenceResult]: ...
    def img2img(
        self,
        model_id: str,
        prompt: str,
        image: ImageInput,
        *,
        image_strength: float | None = None,
        wait: bool = True,
        **options: Unpack[ImageOptions],
    ) -> InferenceResult | Job[InferenceResult]:
        """Image to image: `image` (bytes, a path, a binary file or an Image) transformed by
        `image_strength` (0 keeps it, 1 ignores it)."""
        call = self._requests.inference(
            model_id,
            prompt,
            options,
            run_async=not wait,
            image=self._upload(image),
            extra={"image_strength": image_strength},
        )
        return self._submit(call, wait)

    @overload
    def controlnet(
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
    def controlnet(
        self,
        model_id: str,
        prompt: str,
        image: ImageInput,
        controlnet: ControlNet,
        *,
        preprocess: bool | None = None,
        wait: Literal[False],
        **options: Unpack[ImageOptions],
    ) -> Job[InferenceResult]: ...
    def controlnet(
        self,
        model_id: str,
        prompt: str,
        image: ImageInput,
        controlnet: ControlNet,
        *,
        preprocess: bool | None = None,
        wait: bool = True,
        **options: Unpack[ImageOptions],
    ) -> InferenceResult | Job[InferenceResult]:
        """ControlNet: the control map is made from `image` (canny edges, depth, pose), or is
        `image` itself with `preprocess=False`; the answer's `control_image` is the map used."""
        extra = {"controlnet": controlnet, "controlnet_preprocess": preprocess}
        call = self._requests.inference(
            model_id, prompt, options, run_async=not wait, image=self._upload(image), extra=extra
        )
        return self._submit(call, wait)

    @overload
    def upscale(
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
    def upscale(
        self,
        image: Image | str,
        *,
        inf_id: str | None = None,
        type: UpscaleType = "esrgan",
        scale: float | None = None,
        strength: float | None = None,
        webhook_url: str | None = None,
        wait: Literal[False],
    ) -> Job[UpscaleResult]: ...
    def upscale(
        self,
        image: Image | str,
        *,
        inf_id: str | None = None,
        type: UpscaleType = "esrgan",
        scale: float | None = None,
        strength: float | None = None,
        webhook_url: str | None = None,
        wait: bool = True,
    ) -> UpscaleResult | Job[UpscaleResult]:
        """ESRGAN (`scale` 2 to 4) or hires fix (`strength`) of an image a result gave; a URL
        string needs the `inf_id` of the inference that made it."""
        call = self._requests.upscale(image, inf_id, type, scale, strength, webhook_url, run_async=not wait)
        return self._submit(call, wait)

    @overload
    def video(
        self,
        model_id: str,
        prompt: str,
        *,
        image_url: Image | str | None = None,
        wait: Literal[True] = True,
        **options: Unpack[VideoOptions],
    ) -> VideoResult: ...
    @overload
    def video(
        self,
        model_id: str,
        prompt: str,
        *,
        image_url: Image | str | None = None,
        wait: Literal[False],
        **options: Unpack[VideoOptions],
    ) -> Job[VideoResult]: ...
    def video(
        self,
        model_id: str,
        prompt: str,
        *,
        image_url: Image | str | None = None,
        wait: bool = True,
        **options: Unpack[VideoOptions],
    ) -> VideoResult | Job[VideoResult]:
        """Text to video, or image to video with `image_url` (an Image, or a URL)."""
        return self._submit(self._requests.video(model_id, prompt, image_url, options, run_async=not wait), wait)

    # The catalog, the account and jobs

    def models(self) -> ModelList:
        return self._send(self._requests.models())

    def balance(self) -> Balance:
        """The token's credits (a daguerre addition)."""
        return self._send(self._requests.balance())

    def job(self, inf_id: str) -> JobStatus:
        return self._send(self._requests.job(inf_id))

    def jobs(self, *, limit: int | None = None, before: str | None = None) -> JobPage:
        """The token's jobs, newest first; `before` is the previous page's `next_before`."""
        return self._send(self._requests.jobs(limit, before))

    def cancel(self, inf_id: str) -> JobStatus:
        """Cancels a queued or running job; its credits come back. Its status, now ended."""
        return self._send(self._requests.cancel(inf_id))

    def stream(self, inf_id: str, *, last_event_id: str | None = None) -> Iterator[JobEvent]:
        """The job's events (Queued, Started, Progress, then one of Finished, Failed, Cancelled),
        resumed after `last_event_id` when given; it ends after the final event."""
        return self._events(inf_id, last_event_id)

    # Transport

    def _upload(self, image: ImageInput) -> tuple[str, bytes, str]:
        return _core.upload(image.download() if isinstance(image, Image) else image)

    def _submit(self, submission: Submission[R], wait: bool) -> R | Job[R]:
        answer = self._send(submission.call)
        if isinstance(answer, JobAccepted):
            return Job(self, answer.inf_id, answer.queue_position, submission.reader(self._context))
        if wait:
            return answer
        return Job(self, answer.inf_id or "", 0, submission.reader(self._context), answer)

    def _send(self, call: Call[_core.T]) -> _core.T:
        timeout = self._video_timeout if call.video else self._timeout
        attempt = 1
        while True:
            request = self._requests.build(self._http, call, timeout)
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                raise _core.transport_error(exc, call.path, timeout) from exc
            try:
                return call.parse(_core.body_of(response, call.path), self._context)
            except ServerBusy as busy:
                delay = _core.busy_delay(self.retry, busy, attempt, call.path)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def _events(self, inf_id: str, last_event_id: str | None, timeout: float | None = None) -> Iterator[JobEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        reader = _core.EventReader(last_event_id)
        path = self._requests.events_path(inf_id)
        for reconnect in range(_core.MAX_RECONNECTS + 1):
            if reader.last_event_id == _core.FINAL_EVENT_ID:
                return  # the final event was had (here, or by the caller who resumes after it)
            if reconnect:
                time.sleep(_core.RECONNECT_DELAY_S)
            request = self._requests.stream_request(self._http, inf_id, reader.last_event_id, self._timeout)
            try:
                response = self._http.send(request, stream=True)
                try:
                    if not _core.is_event_stream(response):
                        response.read()
                        _core.body_of(response, path)
                        raise DaguerreError(f"{path} answered without an event stream", inf_id=inf_id)
                    for line in response.iter_lines():
                        if deadline is not None and time.monotonic() > deadline:
                            raise RequestTimeout(_core.still_running(inf_id, timeout), inf_id=inf_id)
                        event = reader.feed(line)
                        if event is not None:
                            yield event
                            if _core.is_final(event):
                                return
                finally:
                    response.close()
            except httpx.TransportError as exc:
                # A stream cut short (a proxy, a restart) resumes after its last event; no answer
                # within the timeout does not.
                if isinstance(exc, httpx.TimeoutException) or reconnect == _core.MAX_RECONNECTS:
                    raise _core.transport_error(exc, path, self._timeout) from exc
        raise ConnectionFailed(f"{path}: the stream ended {_core.MAX_RECONNECTS + 1} times before the job's last event")
