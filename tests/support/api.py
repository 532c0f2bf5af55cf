"""The test client wrapper and the recording engine the fixtures in conftest.py hand out."""

from __future__ import annotations

import io
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from daguerre.engine.client import EngineClient
from daguerre.engine.jobs import EngineStatus, ImagesResult
from daguerre.errors import GenerationFailed

SMALL = {"width": 128, "height": 128, "steps": 2, "num_images": 1}


class Api:
    """A TestClient with the catalog primed and a funded token."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.token = token
        self.services = client.app.state.services  # type: ignore[attr-defined]

    def post(self, path: str, **fields: Any) -> dict[str, Any]:
        response = self.client.post(path, data={"access_token": self.token, **fields})
        assert response.status_code == 200, response.text
        return response.json()

    def infer(self, **fields: Any) -> dict[str, Any]:
        return self.post("/api/inference", **{"model_id": "tiny", "prompt": "a cat", **SMALL, **fields})

    def fetch(self, url: str) -> bytes:
        response = self.client.get(url)
        assert response.status_code == 200, url
        return response.content

    def balance(self) -> float:
        return self.services.accounts.authenticate(self.token).balance


class RecordingEngine(EngineClient):
    """Records the jobs it is given and answers with 1x1 PNGs: for tests of what the HTTP and
    service layers send to the engine (defaults, model settings) at sizes too slow to render on a
    CPU. Generation itself is tested against the real engine."""

    def __init__(self, fail: bool = False) -> None:
        self.jobs: list[Any] = []
        self.fail = fail

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def status(self) -> EngineStatus:
        return EngineStatus(device="none", dtype="none", queued=0, loaded_models=())

    async def submit(self, job: Any) -> ImagesResult:
        self.jobs.append(job)
        if self.fail:
            raise GenerationFailed("generation failed: the engine broke on purpose")
        buffer = io.BytesIO()
        Image.new("RGB", (1, 1)).save(buffer, format="PNG")
        return ImagesResult(tuple(buffer.getvalue() for _ in job.seeds))
