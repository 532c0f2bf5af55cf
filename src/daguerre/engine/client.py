"""The one interface the HTTP layer and the services use to reach the engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import overload

from daguerre.engine.jobs import (
    EngineStatus,
    HiresFixJob,
    ImagesResult,
    Job,
    Result,
    TextToImageJob,
    UpscaleJob,
    VideoJob,
    VideoResult,
)


class EngineClient(ABC):
    """Submit a job, await its result. Implementations: the in-process engine (local.py); a
    Ray Serve deployment can implement the same methods across GPU machines.

    `submit` raises daguerre.errors.ServerBusy when the queue is full and GenerationFailed when the
    work fails; nothing else escapes. A video job gives a VideoResult, every other job an
    ImagesResult; the overloads tell callers which, so none has to narrow the result.
    """

    @abstractmethod
    async def start(self) -> None: ...

    @overload
    async def submit(self, job: VideoJob) -> VideoResult: ...
    @overload
    async def submit(self, job: TextToImageJob | UpscaleJob | HiresFixJob) -> ImagesResult: ...
    @abstractmethod
    async def submit(self, job: Job) -> Result: ...

    @abstractmethod
    def status(self) -> EngineStatus: ...

    @abstractmethod
    async def close(self) -> None: ...
