"""The one interface the HTTP layer and the services use to reach the engine."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable

from daguerre.engine.jobs import FINAL_EVENTS, EngineStatus, Job, JobEvent


class JobHandle:
    """A submitted job: its events, in order, ending with the final one, and a way to cancel it.

    The engine pushes events on the event loop (`push`); one consumer reads them with `events()`.
    An engine in another process fills it from its stream the same way.
    """

    def __init__(self, job_id: str, cancel: Callable[[str], bool]) -> None:
        self.job_id = job_id
        self._cancel = cancel
        self._events: asyncio.Queue[JobEvent] = asyncio.Queue()

    def push(self, event: JobEvent) -> None:
        self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[JobEvent]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, FINAL_EVENTS):
                return

    def cancel(self) -> bool:
        return self._cancel(self.job_id)


class EngineClient(ABC):
    """Submit jobs and follow them through their handles. Implementations: the in-process engine
    (runtime/local.py); a Ray Serve deployment can implement the same methods across GPU machines.

    `submit` raises daguerre.errors.ServerBusy when the queue is full; every other outcome of a
    job, failure included, arrives as its final event. A video job finishes with a VideoResult,
    every other job with an ImagesResult.
    """

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def submit(self, job_id: str, job: Job, owner: str, *, readmitted: bool = False) -> JobHandle:
        """Queue `job`; `owner` (the token) is the unit of fairness. `readmitted` jobs (queued
        before a restart) are admitted beyond max_queue: they were admitted once already."""

    @abstractmethod
    def cancel(self, job_id: str) -> bool:
        """Remove a waiting job, or stop a running one at its next step; False when the engine has
        no such job (unknown, or already ended)."""

    @abstractmethod
    async def health(self) -> EngineStatus: ...

    @abstractmethod
    async def close(self, grace_s: float | None = None) -> None:
        """Stop: waiting jobs fail at once, the running one gets `grace_s` (default: the
        engine's setting) to finish, then is failed and stopped at its next step."""
