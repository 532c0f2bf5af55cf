"""Everything the sync and the async client share, free of I/O: the requests each method makes,
how an answer becomes a typed result or a typed error, the retry policy, and the reading of the
Server-Sent Events stream. The two clients only send, sleep and iterate."""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, Literal, TypedDict, TypeGuard, TypeVar

import httpx
from pydantic import BaseModel

from daguerre_client.errors import (
    ConnectionFailed,
    DaguerreError,
    GenerationFailed,
    InsufficientCredits,
    InvalidParameter,
    JobCancelled,
    NotFound,
    NotSupportedByServer,
    RequestTimeout,
    ServerBusy,
    TooManyJobs,
    Unauthorized,
)
from daguerre_client.types import (
    Balance,
    Cancelled,
    Failed,
    FinalEvent,
    Finished,
    Image,
    InferenceResult,
    JobAccepted,
    JobEvent,
    JobPage,
    JobStatus,
    ModelList,
    Progress,
    Queued,
    Started,
    UpscaleResult,
    VideoResult,
)

log = logging.getLogger("daguerre_client")

T = TypeVar("T")
R = TypeVar("R", InferenceResult, UpscaleResult, VideoResult)
M = TypeVar("M", bound=BaseModel)

# Sized for video: a Wan clip at 720p can take many minutes on one GPU, and a synchronous request
# holds its connection open until the clip is made. Images use the general timeout.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
DEFAULT_VIDEO_TIMEOUT = httpx.Timeout(1800.0, connect=10.0)

Scheduler = Literal["DPMSolverMultistep", "K_EULER_ANCESTRAL", "DDIM", "K_EULER", "PNDM", "KLMS"]
ControlNet = Literal["canny", "depth", "openpose"]
UpscaleType = Literal["esrgan", "hires_fix"]
# An upload: its bytes, a path, an open binary file, or an image this (or another) server made.
ImageInput = bytes | str | os.PathLike[str] | IO[bytes] | Image


class ImageOptions(TypedDict, total=False):
    """/api/inference's optional fields (README "POST /api/inference"); unset ones take the
    server's defaults. `lora` and `lora_scale` may list several (a daguerre extension)."""

    version: str
    width: int
    height: int
    negative_prompt: str
    use_default_neg: bool
    steps: int
    scale: float
    num_images: int
    seed: int
    scheduler: Scheduler
    lora: str | Sequence[str]
    lora_scale: float | Sequence[float]
    lcm: bool
    webhook_url: str


class VideoOptions(TypedDict, total=False):
    """/api/video's optional fields: the contract's `resolution` and `fps`, daguerre's others."""

    resolution: Literal["480p", "720p"]
    fps: int
    num_frames: int
    steps: int
    scale: float
    seed: int
    negative_prompt: str
    version: str
    webhook_url: str


@dataclass(frozen=True)
class RetryPolicy:
    """How a "server busy" answer is retried: `attempts` tries in all, waiting `initial_delay`
    seconds, then `multiplier` times longer each time up to `max_delay`, each wait jittered by
    `jitter` (a fraction) so that many clients do not come back at once. A busy refusal charges
    nothing, so retrying it is always safe."""

    attempts: int = 6
    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 8.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_delay < 0 or self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (retry - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request: where it goes, its fields, and how its success body is read."""

    method: Literal["GET", "POST"]
    path: str
    parse: Callable[[dict[str, Any], dict[str, Any]], T]
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes, str]] | None = None
    video: bool = False


@dataclass(frozen=True)
class Submission(Generic[R]):
    """A generation request: its call (answered by the result, or with async=true by the queued
    job), and how the job's result is read from the status body of its final event."""

    call: Call[R | JobAccepted]
    result: Callable[[dict[str, Any], dict[str, Any]], R]

    def reader(self, context: dict[str, Any]) -> Callable[[dict[str, Any]], R]:
        return lambda body: self.result(body, context)


# Starlette's and most frameworks' words for a route that does not exist.
_ROUTING_MESSAGES = {"Not Found", "Method Not Allowed"}
_UNKNOWN_ROUTE_STATUSES = {404, 405, 501}

_FIELD = re.compile(r"^(?:invalid (?P<invalid>[a-z_][a-z0-9_]*)\b|(?P<missing>[a-z_][a-z0-9_]*) is required\b)")
_ERROR_ID = re.compile(r"\berror id ([0-9a-f]+)\b")
# daguerre's messages begin with what went wrong (README "Errors"); the envelope is sent with
# HTTP 200 by default, so the message, not the status, says which kind of error it is.
_BY_MESSAGE: tuple[tuple[re.Pattern[str], type[DaguerreError]], ...] = (
    (re.compile(r"^(access_token is required|invalid access_token)"), Unauthorized),
    (re.compile(r"^not enough credits"), InsufficientCredits),
    (
        re.compile(r"^(server busy|the engine is not running|the server is shutting down and this request did not)"),
        ServerBusy,
    ),
    (re.compile(r"^too many jobs"), TooManyJobs),
    (re.compile(r"^generation failed"), GenerationFailed),
    (re.compile(r"^cancelled"), JobCancelled),
    (_FIELD, InvalidParameter),
    (re.compile(r"not found|has no version"), NotFound),
)
# With DAGUERRE_HTTP_ERROR_STATUS=true (or another server's statuses) for messages not known above.
_BY_STATUS: dict[int, type[DaguerreError]] = {
    401: Unauthorized,
    402: InsufficientCredits,
    404: NotFound,
    409: JobCancelled,
    422: InvalidParameter,
    429: TooManyJobs,
    500: GenerationFailed,
    503: ServerBusy,
}


def error_from(
    message: str,
    status_code: int | None = None,
    inf_id: str | None = None,
    error_id: str | None = None,
    field_name: str | None = None,
) -> DaguerreError:
    """The typed error for a failure envelope's message (and, failing that, its HTTP status).
    `field_name`: the envelope's `field`, which daguerre adds; the hosted API's messages name it
    only in their text."""
    kind = next((cls for pattern, cls in _BY_MESSAGE if pattern.search(message)), None)
    if kind is None and status_code is not None:
        kind = _BY_STATUS.get(status_code)
    if field_name is not None:
        kind = InvalidParameter
    if kind is InvalidParameter:
        named = _FIELD.search(message)
        field_name = field_name or ((named["invalid"] or named["missing"]) if named else None)
        return InvalidParameter(message, field=field_name, status_code=status_code, inf_id=inf_id)
    if kind is GenerationFailed:
        found = _ERROR_ID.search(message)
        error_id = error_id or (found[1] if found else None)
        return GenerationFailed(message, error_id=error_id, status_code=status_code, inf_id=inf_id)
    return (kind or DaguerreError)(message, status_code=status_code, inf_id=inf_id)


def body_of(response: httpx.Response, path: str) -> dict[str, Any]:
    """The success body of an answer; raises the typed error of a failure."""
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    if not isinstance(body, dict) or "error_code" not in body:
        # Not the contract's envelope: a route this server does not have, or something in between
        # (a proxy's error page).
        if status in _UNKNOWN_ROUTE_STATUSES:
            raise NotSupportedByServer(path, status_code=status)
        if status == 503:
            raise ServerBusy(f"{path} answered HTTP 503 (service unavailable)", status_code=status)
        raise DaguerreError(f"{path} answered HTTP {status} with {response.text[:200]!r}", status_code=status)
    if str(body["error_code"]) == "0":
        return {name: value for name, value in body.items() if name != "error_code"}
    message = str(body.get("message") or "the server gave no message")
    if status in _UNKNOWN_ROUTE_STATUSES and message in _ROUTING_MESSAGES:
        raise NotSupportedByServer(path, status_code=status)
    error_id, field_name = body.get("error_id"), body.get("field")
    raise error_from(
        message,
        status,
        error_id=error_id if isinstance(error_id, str) else None,
        field_name=field_name if isinstance(field_name, str) else None,
    )


def transport_error(exc: httpx.TransportError, path: str, timeout: httpx.Timeout) -> DaguerreError:
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(
            f"{path}: no answer within the client's timeout ({timeout.read} s read, {timeout.connect} s connect); "
            f"pass a larger timeout (or video_timeout) to the client: {exc!r}"
        )
    return ConnectionFailed(f"{path}: {exc!r}")


def outcome(event: FinalEvent, parse: Callable[[dict[str, Any]], R]) -> R:
    """A job's result from its final event, or the error it ended with."""
    job = event.job
    if isinstance(event, Finished):
        return parse(job.model_dump(mode="json"))
    message = job.message or f"job {job.inf_id} {job.status}"
    if isinstance(event, Cancelled):
        raise JobCancelled(message, inf_id=job.inf_id)
    raise error_from(message, inf_id=job.inf_id, error_id=job.error_id)


# Form values, as the contract takes them: strings, "true"/"false", comma-separated lists.
def _form(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return ",".join(_form(item) for item in value)
    return str(value)


def form_fields(values: Mapping[str, object]) -> dict[str, str]:
    return {name: _form(value) for name, value in values.items() if value is not None}


def upload(image: bytes | str | os.PathLike[str] | IO[bytes], name: str = "image.png") -> tuple[str, bytes, str]:
    """An init_image_file part: (file name, bytes, content type)."""
    if isinstance(image, bytes):
        data = image
    elif isinstance(image, str | os.PathLike):
        path = Path(image)
        data, name = path.read_bytes(), path.name
    else:
        data = image.read()
        name = Path(str(getattr(image, "name", name))).name
    return name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"


def file_url(image: Image | str) -> str:
    return image.url if isinstance(image, Image) else image


def result_or_job(
    parse: Callable[[dict[str, Any], dict[str, Any]], R],
) -> Callable[[dict[str, Any], dict[str, Any]], JobAccepted | R]:
    """Reads the answer to async=true: a queued job, or, from a server without jobs (the hosted
    API ignores fields it does not know), the finished result itself."""

    def read(body: dict[str, Any], context: dict[str, Any]) -> JobAccepted | R:
        if body.get("status") == "queued" and "inf_id" in body:
            return JobAccepted.model_validate(body)
        return parse(body, context)

    return read


def _validator(model: type[M]) -> Callable[[dict[str, Any], dict[str, Any]], M]:
    def read(body: dict[str, Any], context: dict[str, Any]) -> M:
        return model.model_validate(body, context=context)

    return read


read_inference = _validator(InferenceResult)
read_upscale = _validator(UpscaleResult)
read_video = _validator(VideoResult)
read_models = _validator(ModelList)
read_balance = _validator(Balance)
read_status = _validator(JobStatus)
read_page = _validator(JobPage)


class Requests:
    """The calls of every method, built once for both clients."""

    def __init__(self, base_url: str, token: str) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token

    def inference(
        self,
        model_id: str,
        prompt: str,
        options: Mapping[str, object],
        *,
        run_async: bool,
        image: tuple[str, bytes, str] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> Submission[InferenceResult]:
        fields = form_fields({"model_id": model_id, "prompt": prompt, **options, **(extra or {})})
        return self._submit("/api/inference", fields, read_inference, run_async, image)

    def upscale(
        self,
        image: Image | str,
        inf_id: str | None,
        kind: UpscaleType,
        scale: float | None,
        strength: float | None,
        webhook_url: str | None,
        *,
        run_async: bool,
    ) -> Submission[UpscaleResult]:
        inf_id = inf_id or (image.inf_id if isinstance(image, Image) else None)
        if not inf_id:
            raise ValueError("upscale needs the inf_id of the inference that made the image: pass inf_id=")
        values = {"inf_id": inf_id, "url": file_url(image), "type": kind, "scale": scale, "strength": strength}
        fields = form_fields({**values, "webhook_url": webhook_url})
        return self._submit("/api/upscale", fields, read_upscale, run_async, None)

    def video(
        self,
        model_id: str,
        prompt: str,
        image_url: Image | str | None,
        options: Mapping[str, object],
        *,
        run_async: bool,
    ) -> Submission[VideoResult]:
        url = file_url(image_url) if image_url is not None else None
        fields = form_fields({"model_id": model_id, "prompt": prompt, "image_url": url, **options})
        return self._submit("/api/video", fields, read_video, run_async, None, video=True)

    def _submit(
        self,
        path: str,
        fields: dict[str, str],
        parse: Callable[[dict[str, Any], dict[str, Any]], R],
        run_async: bool,
        image: tuple[str, bytes, str] | None,
        *,
        video: bool = False,
    ) -> Submission[R]:
        files = {"init_image_file": image} if image is not None else None
        if run_async:
            fields = {**fields, "async": "true"}
        return Submission(Call("POST", path, result_or_job(parse), fields, files, video), parse)

    def models(self) -> Call[ModelList]:
        return Call("POST", "/api/models", read_models)

    def balance(self) -> Call[Balance]:
        return Call("GET", "/api/balance", read_balance)

    def job(self, inf_id: str) -> Call[JobStatus]:
        return Call("GET", f"/api/jobs/{_segment(inf_id)}", read_status)

    def cancel(self, inf_id: str) -> Call[JobStatus]:
        return Call("POST", f"/api/jobs/{_segment(inf_id)}/cancel", read_status)

    def jobs(self, limit: int | None, before: str | None) -> Call[JobPage]:
        return Call("GET", "/api/jobs", read_page, form_fields({"limit": limit, "before": before}))

    def events_path(self, inf_id: str) -> str:
        return f"/api/jobs/{_segment(inf_id)}/events"

    def build(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any], timeout: httpx.Timeout) -> httpx.Request:
        url = self.base_url + call.path
        if call.method == "GET":
            # The token in a header, never in a URL that logs keep.
            headers = {"Authorization": f"Bearer {self.token}"}
            return http.build_request("GET", url, params=call.fields, headers=headers, timeout=timeout)
        # The contract's way, and the only one the hosted API takes: access_token in the body.
        data = {"access_token": self.token, **call.fields}
        return http.build_request("POST", url, data=data, files=call.files, timeout=timeout)

    def stream_request(
        self, http: httpx.Client | httpx.AsyncClient, inf_id: str, last_event_id: str | None, timeout: httpx.Timeout
    ) -> httpx.Request:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        return http.build_request("GET", self.base_url + self.events_path(inf_id), headers=headers, timeout=timeout)


def _segment(inf_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", inf_id):
        raise ValueError(f"invalid inf_id {inf_id!r}: letters, digits, '-' and '_' only")
    return inf_id


class EventReader:
    """Server-Sent Events, line by line, as the HTML specification reads them (fields `event`,
    `data` on several lines, `id`; comments; a blank line ends an event). Written here, not taken
    from httpx-sse, to keep the client's dependencies to httpx and pydantic: the parsing is these
    few lines, and the same reader serves the sync and the async stream."""

    def __init__(self, last_event_id: str | None = None) -> None:
        self.last_event_id = last_event_id
        self._name = ""
        self._data: list[str] = []

    def feed(self, line: str) -> JobEvent | None:
        if not line:
            name, data = self._name or "message", self._data
            self._name, self._data = "", []
            return _event(name, "\n".join(data), self.last_event_id) if data else None
        if line.startswith(":"):
            return None  # a keep-alive comment
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            self._name = value
        elif key == "data":
            self._data.append(value)
        elif key == "id" and "\0" not in value:
            self.last_event_id = value
        return None


def _event(name: str, data: str, event_id: str | None) -> JobEvent | None:
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if name in ("finished", "failed", "cancelled"):
        finals: dict[str, type[FinalEvent]] = {"finished": Finished, "failed": Failed, "cancelled": Cancelled}
        ended: FinalEvent = finals[name](id=event_id, job=JobStatus.model_validate(body))
        return ended
    kinds: dict[str, type[Queued | Started | Progress]] = {"queued": Queued, "started": Started, "progress": Progress}
    if name not in kinds:
        return None  # an event a newer server added: skipped, so this client keeps working
    event: Queued | Started | Progress = kinds[name].model_validate({**body, "id": event_id, "name": name})
    return event


def is_final(event: JobEvent) -> TypeGuard[FinalEvent]:
    return isinstance(event, Finished | Failed | Cancelled)


def still_running(inf_id: str, timeout: float | None) -> str:
    return f"job {inf_id} did not end within {timeout} s; it keeps running: wait again, or cancel it"


# The id of a job's final event: a stream resumed after it has nothing more to say.
FINAL_EVENT_ID = "end"
# Reconnections of one event stream that broke before its final event, resuming after the last id.
MAX_RECONNECTS = 5
RECONNECT_DELAY_S = 0.5


def busy_delay(policy: RetryPolicy, error: ServerBusy, attempt: int, path: str) -> float | None:
    """Seconds to wait before trying `path` again after `attempt` tries, or None to give up."""
    if attempt >= policy.attempts:
        return None
    delay = policy.delay(attempt)
    log.info("%s: %s; retry %d of %d in %.2f s", path, error.message, attempt, policy.attempts - 1, delay)
    return delay


def is_event_stream(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.headers.get("content-type", "").startswith("text/event-stream")
