"""The typed answers. Unknown fields are kept (a newer server's additions reach the caller) and
fields daguerre adds to the hosted API are optional, so the same models read both servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, model_validator

from daguerre_client.errors import DaguerreError, NotFound

# Files are public URLs (a random key, or the hosted service's CDN): downloads send no token.
DOWNLOAD_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class File(_Answer):
    """A file the server made; `download()` (or `await download_async()`) fetches it, through the
    client that made the request when it has one, and writes it to `path` when given."""

    url: str
    _http: httpx.Client | httpx.AsyncClient | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _remember_client(self, info: ValidationInfo) -> Self:
        if isinstance(info.context, dict):
            self._http = info.context.get("http")
        return self

    def __str__(self) -> str:
        return self.url

    def download(self, path: str | Path | None = None) -> bytes:
        if isinstance(self._http, httpx.Client):
            response = self._http.get(self.url, timeout=DOWNLOAD_TIMEOUT)
        else:
            with httpx.Client(timeout=DOWNLOAD_TIMEOUT) as http:
                response = http.get(self.url)
        return self._keep(response, path)

    async def download_async(self, path: str | Path | None = None) -> bytes:
        if isinstance(self._http, httpx.AsyncClient):
            response = await self._http.get(self.url, timeout=DOWNLOAD_TIMEOUT)
        else:
            async with httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT) as http:
                response = await http.get(self.url)
        return self._keep(response, path)

    def _keep(self, response: httpx.Response, path: str | Path | None) -> bytes:
        if response.status_code == 404:
            raise NotFound(f"file not found: {self.url}", status_code=404)
        if response.status_code != 200:
            raise DaguerreError(
                f"downloading {self.url} answered HTTP {response.status_code}", status_code=response.status_code
            )
        if path is not None:
            Path(path).write_bytes(response.content)
        return response.content


class Image(File):
    """One image: its URL, the seed that reproduces it alone (daguerre only), and the inference
    that made it, which /api/upscale asks for."""

    seed: int | None = None
    inf_id: str | None = None


class Video(File):
    pass


def _file(url: object, **more: Any) -> object:
    return {"url": url, **more} if isinstance(url, str) else url


class InferenceResult(_Answer):
    """/api/inference's answer: the images (with their seeds), the price and the inference id."""

    inf_id: str
    credit_cost: float
    images: list[Image]
    seeds: list[int] = Field(default_factory=list, description="daguerre only; image i is seeds[i]")
    control_image: Image | None = Field(None, description="the control map a ControlNet request used")

    @model_validator(mode="before")
    @classmethod
    def _images_from_urls(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            return data
        seeds, inf_id = data.get("seeds") or [], data.get("inf_id")
        images = [
            _file(url, seed=seeds[i] if i < len(seeds) else None, inf_id=inf_id) for i, url in enumerate(data["images"])
        ]
        control = data.get("control_image") or None
        return {**data, "images": images, "control_image": _file(control) if control else None}

    def download_all(self, folder: str | Path) -> list[Path]:
        """Writes every image to `folder` as <inf_id>-<i>.png; the paths, in order."""
        paths = [Path(folder) / f"{self.inf_id}-{i}.png" for i in range(len(self.images))]
        for image, path in zip(self.images, paths, strict=True):
            image.download(path)
        return paths


class UpscaleResult(_Answer):
    """/api/upscale's answer; `output` can be upscaled again (daguerre gives it its own inf_id)."""

    output: Image
    credit_cost: float
    inf_id: str | None = None
    width: int | None = None
    height: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _output_from_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and "output" in data:
            return {**data, "output": _file(data["output"], inf_id=data.get("inf_id"))}
        return data


class VideoResult(_Answer):
    """/api/video's answer: an H.264 MP4 and, from daguerre, its size, length and seed."""

    video: Video
    inf_id: str
    credit_cost: float
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    seed: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _video_from_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and "video_url" in data:
            rest = {name: value for name, value in data.items() if name != "video_url"}
            return {**rest, "video": _file(data["video_url"])}
        return data

    @property
    def video_url(self) -> str:
        return self.video.url


class ModelInfo(_Answer):
    """One entry of /api/models; the hosted API gives at least id, title, cover_img and link."""

    id: str
    title: str = ""
    name: str = ""
    cover_img: str = ""
    link: str = ""
    tags: list[str] = Field(default_factory=list)
    type: str = ""
    base_model: str = ""
    versions: list[str] = Field(default_factory=list)
    civitai_model_id: int | None = None


class ModelList(_Answer):
    models: list[ModelInfo] = Field(default_factory=list)
    loras: list[ModelInfo] = Field(default_factory=list)
    video_models: list[ModelInfo] = Field(default_factory=list)


class Balance(_Answer):
    credits: float
    name: str = ""
    token_prefix: str = ""


JobState = Literal["queued", "running", "done", "failed", "cancelled"]
ENDED: frozenset[str] = frozenset({"done", "failed", "cancelled"})


class JobProgress(_Answer):
    step: int
    total: int
    fraction: float


class JobStatus(_Answer):
    """/api/jobs/{inf_id}: where a job stands; when done, its answer's fields too: `images` and
    `seeds` (and `control_image`), `output`, or `video_url`, with the rest in `model_extra`."""

    inf_id: str
    kind: str
    status: JobState
    queue_position: int | None = None
    progress: JobProgress | None = None
    attempts: int = 0
    queued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    queue_wait_s: float | None = None
    run_s: float | None = None
    credit_cost: float = 0.0
    message: str | None = None
    error_id: str | None = None
    webhook_url: str | None = None
    webhook_attempts: list[dict[str, Any]] | None = None
    images: list[str] | None = None
    seeds: list[int] | None = None
    control_image: str | None = None
    output: str | None = None
    video_url: str | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


class JobPage(_Answer):
    """A page of the token's jobs, newest first; pass `next_before` as `before` for the next."""

    jobs: list[JobStatus]
    next_before: str | None = None


class JobAccepted(_Answer):
    inf_id: str
    status: str = "queued"
    queue_position: int = 0


class _Event(_Answer):
    id: str | None = Field(None, description="The SSE id; stream(last_event_id=...) resumes after it")


class Queued(_Event):
    """On admission, and whenever the job's place in the queue changes."""

    name: Literal["queued"] = "queued"
    queue_position: int | None = None


class Started(_Event):
    name: Literal["started"] = "started"


class Progress(_Event):
    """One denoising step (or upscaled tile) done."""

    name: Literal["progress"] = "progress"
    step: int
    total: int
    fraction: float


class Finished(_Event):
    name: Literal["finished"] = "finished"
    job: JobStatus


class Failed(_Event):
    name: Literal["failed"] = "failed"
    job: JobStatus


class Cancelled(_Event):
    name: Literal["cancelled"] = "cancelled"
    job: JobStatus


JobEvent = Queued | Started | Progress | Finished | Failed | Cancelled
FinalEvent = Finished | Failed | Cancelled
