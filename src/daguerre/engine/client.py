"""The one interface the HTTP layer and the services use to reach the engine."""

from __future__ import annotations

from abc import ABC, abstractmethod

from daguerre.engine.jobs import EngineStatus, Job, Result


class EngineClient(ABC):
    """Submit a job, await its result. Implementations: the in-process engine (local.py); a
    Ray Serve deployment can implement the same methods across GPU machines.

    `submit` raises daguerre.errors.ServerBusy when the queue is full and GenerationFailed when the
    work fails; nothing else escapes.
    """

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def submit(self, job: Job) -> Result: ...

    @abstractmethod
    def status(self) -> EngineStatus: ...

    @abstractmethod
    async def close(self) -> None: ...
