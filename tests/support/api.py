"""The test client wrapper the fixtures in conftest.py hand out, catalog registration as the CLI
does it, and the recording engine."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from daguerre.app import create_app
from daguerre.engine.client import EngineClient, JobHandle
from daguerre.engine.jobs import (
    EngineStatus,
    Failed,
    Finished,
    ImagesResult,
    Job,
    JobEvent,
    Queued,
    Result,
    Started,
    VideoJob,
    VideoResult,
)
from daguerre.services.catalog import Format, Kind, ModelRecord, NewModel
from daguerre.services.container import Services
from daguerre.services.probing import inspect_model
from daguerre.settings import Settings

SMALL = {"width": 128, "height": 128, "steps": 2, "num_images": 1}


class Api:
    """A TestClient with the catalog primed and a funded token; `infer` renders `model_id`."""

    def __init__(self, client: TestClient, token: str, model_id: str = "tiny") -> None:
        self.client = client
        self.token = token
        self.model_id = model_id
        self.services: Services = client.app.state.services  # type: ignore[attr-defined]

    def for_model(self, model_id: str) -> Api:
        """The same client and token, rendering another model by default."""
        return Api(self.client, self.token, model_id)

    def post(self, path: str, **fields: Any) -> dict[str, Any]:
        response = self.client.post(path, data={"access_token": self.token, **fields})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def infer(self, **fields: Any) -> dict[str, Any]:
        return self.post("/api/inference", **{"model_id": self.model_id, "prompt": "a cat", **SMALL, **fields})

    def infer_with_image(self, image: bytes, **fields: Any) -> dict[str, Any]:
        """An inference with `image` as its init_image_file (img2img, or ControlNet's input)."""
        data = {"access_token": self.token, "model_id": self.model_id, "prompt": "a cat", **SMALL, **fields}
        files = {"init_image_file": ("base.png", image, "image/png")}
        response = self.client.post("/api/inference", data=data, files=files)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def images(self, body: dict[str, Any]) -> list[bytes]:
        """The images of a successful inference answer, fetched."""
        assert body["error_code"] == 0, body
        return [self.fetch(url) for url in body["images"]]

    def fetch(self, url: str) -> bytes:
        response = self.client.get(url)
        assert response.status_code == 200, url
        return response.content

    def balance(self) -> float:
        return self.services.accounts.authenticate(self.token).balance


def register(api: Api, kind: str, path: Path, model_id: str, family: str | None = None, **options: Any) -> ModelRecord:
    """Register as `daguerre models add --kind KIND` does: the inspector decides format and family."""
    info = inspect_model(kind, path)
    return api.services.catalog.add(
        NewModel(
            path=path,
            format=Format(info.format),
            kind=Kind(kind),
            title=model_id,
            id=model_id,
            family=family or info.family,
            options={**info.options, **options},
        )
    )


def answered(job_id: str, events: list[JobEvent]) -> JobHandle:
    """A handle that has already received `events`: what an engine that answers at once gives."""
    handle = JobHandle(job_id, lambda _job_id: False)
    for event in events:
        handle.push(event)
    return handle


def fake_result(job: Job) -> Result:
    """1x1 PNGs, one per seed (one for upscales), or a few bytes standing for an MP4."""
    if isinstance(job, VideoJob):
        return VideoResult(b"not really an mp4")
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    return ImagesResult(tuple(buffer.getvalue() for _ in getattr(job, "seeds", (0,))))


class RecordingEngine(EngineClient):
    """Records the jobs it is given and answers at once with fake results: for tests of what the
    HTTP and service layers send to the engine (defaults, model settings) at sizes too slow to
    render on a CPU. Generation itself is tested against the real engine."""

    def __init__(self, fail: bool = False) -> None:
        self.jobs: list[Any] = []
        self.fail = fail

    async def start(self) -> None:
        return None

    async def close(self, grace_s: float | None = None) -> None:
        return None

    async def health(self) -> EngineStatus:
        return EngineStatus(device="none", dtype="none", queued=0, loaded_models=())

    def cancel(self, job_id: str) -> bool:
        return False

    async def submit(self, job_id: str, job: Job, owner: str, *, readmitted: bool = False) -> JobHandle:
        self.jobs.append(job)
        final: JobEvent = (
            Failed("generation failed: the engine broke on purpose") if self.fail else Finished(fake_result(job))
        )
        return answered(job_id, [Queued(0), Started(), final])


@contextmanager
def serve(settings: Settings, engine: EngineClient, tiny_sd15: Path, credits: float) -> Iterator[Api]:
    """An app on `engine` with the tiny SD 1.5 model registered as "tiny" and a funded token."""
    with TestClient(create_app(settings, engine=engine), base_url="http://testserver") as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        services.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="tiny", title="Tiny"))
        token, _ = services.accounts.create_token(name="test", credits=credits)
        yield Api(client, token)
