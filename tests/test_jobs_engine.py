"""The engine seam on the real in-process engine and the tiny model: each job's events in order,
cancel within one step (running) or at once (waiting), and owners served in turn."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from daguerre.engine.client import JobHandle
from daguerre.engine.jobs import (
    Cancelled,
    Failed,
    Finished,
    ImagesResult,
    JobEvent,
    ModelSpec,
    Progress,
    Queued,
    Started,
    TextToImageJob,
)
from daguerre.engine.runtime.local import LocalEngine
from daguerre.errors import ServerBusy

WAIT_S = 60


def job(tiny_sd15: Path, steps: int = 2, seed: int = 1) -> TextToImageJob:
    model = ModelSpec(id="tiny", version="1", path=str(tiny_sd15), format="diffusers", family="sd15")
    return TextToImageJob(model, "a cat", "", 64, 64, steps, 7.5, "DDIM", (seed,))


async def collect(handle: JobHandle, on_event: Any = None) -> list[JobEvent]:
    events: list[JobEvent] = []
    async with asyncio.timeout(WAIT_S):
        async for event in handle.events():
            events.append(event)
            if on_event is not None:
                on_event(event)
    return events


async def started(handle: JobHandle) -> None:
    """Read a handle's events up to Started (the rest stay for a later read)."""
    async with asyncio.timeout(WAIT_S):
        async for event in handle.events():
            if event == Started():
                return


def run(engine: LocalEngine, scenario: Any) -> Any:
    async def main() -> Any:
        await engine.start()
        try:
            return await scenario()
        finally:
            await engine.close()

    return asyncio.run(main())


def test_events_come_in_order_and_end_with_the_result(engine: LocalEngine, tiny_sd15: Path) -> None:
    async def scenario() -> list[JobEvent]:
        return await collect(await engine.submit("one", job(tiny_sd15, steps=3), "a"))

    events = run(engine, scenario)
    assert events[:2] == [Queued(0), Started()]
    assert events[2:5] == [Progress(1, 3), Progress(2, 3), Progress(3, 3)]
    assert len(events) == 6 and isinstance(events[5], Finished)
    result = events[5].result
    assert isinstance(result, ImagesResult) and result.images[0].startswith(b"\x89PNG")


def test_cancelling_a_running_job_stops_it_within_one_step(engine: LocalEngine, tiny_sd15: Path) -> None:
    async def scenario() -> tuple[list[JobEvent], list[bool]]:
        handle = await engine.submit("long", job(tiny_sd15, steps=50), "a")
        answers: list[bool] = []

        def on_event(event: JobEvent) -> None:
            if event == Progress(2, 50):
                answers.append(handle.cancel())

        return await collect(handle, on_event), answers

    events, answers = run(engine, scenario)
    assert answers == [True]
    assert events[-1] == Cancelled("cancelled")
    after = events[events.index(Progress(2, 50)) + 1 : -1]
    assert len(after) <= 1, after  # at most the step that was already under way
    assert engine.status().queued == 0


def test_cancelling_a_waiting_job_removes_it(engine: LocalEngine, tiny_sd15: Path) -> None:
    async def scenario() -> tuple[list[JobEvent], list[JobEvent], bool]:
        first = await engine.submit("first", job(tiny_sd15, steps=4), "a")
        await started(first)
        second = await engine.submit("second", job(tiny_sd15), "a")
        assert engine.status().waiting == 1
        assert second.cancel()
        waiting = await collect(second)
        assert engine.status().waiting == 0
        done = await collect(first)
        return done, waiting, second.cancel()

    done, waiting, again = run(engine, scenario)
    assert waiting == [Queued(1), Cancelled("cancelled")]
    assert isinstance(done[-1], Finished)
    assert again is False  # it has ended: nothing to cancel


def test_owners_take_turns(engine: LocalEngine, tiny_sd15: Path) -> None:
    """Token A queues 10, token B queues 1: B's job starts after at most one of A's."""

    async def scenario() -> list[str]:
        started: list[str] = []
        handles = [await engine.submit(f"a{i}", job(tiny_sd15, steps=1, seed=i), "A") for i in range(10)]
        handles.append(await engine.submit("b0", job(tiny_sd15, steps=1), "B"))

        async def follow(handle: JobHandle) -> list[JobEvent]:
            return await collect(handle, lambda e: started.append(handle.job_id) if e == Started() else None)

        outcomes = await asyncio.gather(*(follow(handle) for handle in handles))
        assert all(isinstance(events[-1], Finished) for events in outcomes)
        # B was told its place: behind the running job of A, before A's other nine.
        assert outcomes[-1][0] == Queued(1)
        return started

    # One job per pass: with batching the worker may take A's first jobs together (as many as it
    # finds waiting when it wakes), and B's place would depend on that timing. Batches keep this
    # order too (tests/test_batching.py).
    batching, engine.max_batch_size = engine.max_batch_size, 1
    try:
        started = run(engine, scenario)
    finally:
        engine.max_batch_size = batching
    assert started.index("b0") <= 1, started
    assert sorted(started) == sorted([f"a{i}" for i in range(10)] + ["b0"])


def test_a_full_queue_refuses_and_readmitted_jobs_pass(engine: LocalEngine, tiny_sd15: Path) -> None:
    limit, engine._max_queue = engine._max_queue, 1

    async def scenario() -> None:
        first = await engine.submit("first", job(tiny_sd15), "a")
        with pytest.raises(ServerBusy, match="server busy"):
            await engine.submit("second", job(tiny_sd15), "b")
        readmitted = await engine.submit("third", job(tiny_sd15), "b", readmitted=True)
        for handle in (first, readmitted):
            assert isinstance((await collect(handle))[-1], Finished)

    try:
        run(engine, scenario)
    finally:
        engine._max_queue = limit


def test_closing_fails_waiting_jobs_at_once(engine: LocalEngine, tiny_sd15: Path) -> None:
    async def scenario() -> tuple[list[JobEvent], list[JobEvent]]:
        await engine.start()
        running = await engine.submit("running", job(tiny_sd15, steps=50), "a")
        await started(running)
        waiting = await engine.submit("waiting", job(tiny_sd15), "a")
        closing = asyncio.create_task(engine.close(grace_s=0))
        outcomes = await collect(running), await collect(waiting)
        await closing
        return outcomes

    running, waiting = asyncio.run(scenario())
    assert isinstance(waiting[-1], Failed) and "did not start" in waiting[-1].message
    assert waiting[-1].status == 503
    assert isinstance(running[-1], Failed) and "grace period" in running[-1].message
