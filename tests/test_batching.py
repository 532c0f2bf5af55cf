"""Request batching on the real in-process engine and the tiny model: jobs that wait together and
can share a forward pass run as one batch, and each still behaves as if it ran alone: its images
(the solo render's, within the README's batch rounding), its events, its cancel and its failure.

Each scenario starts a blocker job, queues the jobs under test while it runs (so they wait
together, as concurrent clients' jobs do), and reads every job's events in the order they reach
the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from daguerre.engine.client import JobHandle
from daguerre.engine.jobs import (
    Cancelled,
    EmbeddingSpec,
    Failed,
    Finished,
    ImagesResult,
    ImageToImageJob,
    Job,
    JobEvent,
    ModelSpec,
    Progress,
    Started,
    TextToImageJob,
)
from daguerre.engine.runtime.local import LocalEngine
from tests.support.engine_behaviour import assert_same_but_for_batch_rounding
from tests.support.images import photo, png

WAIT_S = 60
STEPS = 3
Log = list[tuple[str, JobEvent]]


def spec(tiny_sd15: Path) -> ModelSpec:
    return ModelSpec(id="tiny", version="1", path=str(tiny_sd15), format="diffusers", family="sd15")


def text_job(tiny_sd15: Path, prompt: str = "a cat", seeds: tuple[int, ...] = (1,), **fields: Any) -> TextToImageJob:
    values: dict[str, Any] = {"negative_prompt": "", "steps": STEPS, **fields}
    return TextToImageJob(
        spec(tiny_sd15),
        prompt,
        values["negative_prompt"],
        64,
        64,
        values["steps"],
        7.5,
        "K_EULER_ANCESTRAL",  # draws fresh noise at every step: each image must keep its own generator
        seeds,
    )


def image_job(tiny_sd15: Path, picture: int, seeds: tuple[int, ...], prompt: str = "a harbour") -> ImageToImageJob:
    return ImageToImageJob(
        spec(tiny_sd15),
        prompt,
        "",
        64,
        64,
        4,
        7.5,
        "DPMSolverMultistep",
        seeds,
        init_image=png(photo(64, 64, seed=picture)),
        strength=0.5,
    )


def blocker(tiny_sd15: Path) -> TextToImageJob:
    """A job of another batch key that keeps the worker busy while the jobs under test queue."""
    return text_job(tiny_sd15, "a blocker", steps=8)


def run_queued(
    engine: LocalEngine,
    tiny_sd15: Path,
    jobs: dict[str, tuple[Job, str]],
    on_event: Callable[[str, JobEvent, JobHandle], None] | None = None,
) -> tuple[dict[str, list[JobEvent]], Log]:
    """Submit `jobs` ({job id: (job, owner)}) while a blocker runs; every job's events, and all of
    them in the order they reached the loop."""

    async def scenario() -> tuple[dict[str, list[JobEvent]], Log]:
        await engine.start()
        try:
            log: Log = []
            first = await engine.submit("blocker", blocker(tiny_sd15), "Z")
            async with asyncio.timeout(WAIT_S):
                async for event in first.events():
                    log.append(("blocker", event))
                    if event == Started():
                        break
            handles = {"blocker": first}
            for job_id, (job, owner) in jobs.items():
                handles[job_id] = await engine.submit(job_id, job, owner)

            async def follow(job_id: str, handle: JobHandle) -> tuple[str, list[JobEvent]]:
                events: list[JobEvent] = []
                async with asyncio.timeout(WAIT_S):
                    async for event in handle.events():
                        events.append(event)
                        log.append((job_id, event))
                        if on_event is not None:
                            on_event(job_id, event, handle)
                return job_id, events

            followed = await asyncio.gather(*(follow(job_id, handle) for job_id, handle in handles.items()))
            return dict(followed), log
        finally:
            await engine.close()

    return asyncio.run(scenario())


def images(events: list[JobEvent]) -> tuple[bytes, ...]:
    final = events[-1]
    assert isinstance(final, Finished), final
    assert isinstance(final.result, ImagesResult)
    return final.result.images


def solo(engine: LocalEngine, job: Job) -> tuple[bytes, ...]:
    result = engine.run(job)
    assert isinstance(result, ImagesResult)
    return result.images


def assert_each_is_its_solo_render(engine: LocalEngine, jobs: dict[str, tuple[Job, str]], outcome: Any) -> None:
    for job_id, (job, _) in jobs.items():
        batched, alone = images(outcome[job_id]), solo(engine, job)
        assert len(batched) == len(alone)
        for one, other in zip(batched, alone, strict=True):
            assert_same_but_for_batch_rounding(one, other)


def batches(log: Log) -> list[set[str]]:
    """The jobs that started together: a batch's Started events all come before its first step."""
    groups: list[set[str]] = []
    opened = False
    for job_id, event in log:
        if event == Started():
            if not opened:
                groups.append(set())
                opened = True
            groups[-1].add(job_id)
        elif isinstance(event, Progress):
            opened = False
    return groups


def progress_of(events: list[JobEvent]) -> list[tuple[int, int]]:
    return [(event.step, event.total) for event in events if isinstance(event, Progress)]


@contextmanager
def batch_size(engine: LocalEngine, size: int) -> Iterator[None]:
    before, engine.max_batch_size = engine.max_batch_size, size
    try:
        yield
    finally:
        engine.max_batch_size = before


def test_text_to_image_jobs_batch_and_each_image_is_its_solo_render(engine: LocalEngine, tiny_sd15: Path) -> None:
    jobs: dict[str, tuple[Job, str]] = {
        "one": (text_job(tiny_sd15, "a red cat", (10,)), "A"),
        "two": (text_job(tiny_sd15, "a blue dog", (20, 21), negative_prompt="blurry"), "B"),
        "three": (text_job(tiny_sd15, "a red cat", (30,)), "A"),
    }
    outcome, log = run_queued(engine, tiny_sd15, jobs)
    assert batches(log) == [{"blocker"}, {"one", "two", "three"}]
    for job_id in jobs:
        assert progress_of(outcome[job_id]) == [(step, STEPS) for step in range(1, STEPS + 1)]
    assert_each_is_its_solo_render(engine, jobs, outcome)
    assert len(set(images(outcome["two"]))) == 2


def test_image_to_image_jobs_batch_with_their_own_init_images(engine: LocalEngine, tiny_sd15: Path) -> None:
    jobs: dict[str, tuple[Job, str]] = {
        "one": (image_job(tiny_sd15, picture=0, seeds=(5, 6)), "A"),
        "two": (image_job(tiny_sd15, picture=1, seeds=(5,), prompt="a castle"), "B"),
    }
    outcome, log = run_queued(engine, tiny_sd15, jobs)
    assert batches(log)[1] == {"one", "two"}
    assert_each_is_its_solo_render(engine, jobs, outcome)
    assert images(outcome["one"])[0] != images(outcome["two"])[0]  # same seed, other picture


def test_prompts_of_different_chunk_counts_batch_as_they_render_alone(engine: LocalEngine, tiny_sd15: Path) -> None:
    long = ", ".join(f"word{i}" for i in range(100))  # three chunks of 75 tokens
    jobs: dict[str, tuple[Job, str]] = {
        "short": (text_job(tiny_sd15, "a cat", (1,)), "A"),
        "long": (text_job(tiny_sd15, long, (2,)), "A"),
        "long-negative": (text_job(tiny_sd15, "a cat", (3,), negative_prompt="a BREAK b"), "B"),
    }
    outcome, log = run_queued(engine, tiny_sd15, jobs)
    assert batches(log)[1] == set(jobs)
    assert_each_is_its_solo_render(engine, jobs, outcome)


def test_batch_mates_load_their_own_embeddings(engine: LocalEngine, tiny_sd15: Path, tmp_path: Path) -> None:
    # Only the second job names the embedding: the batch's head does not, and its load alone would
    # leave the mate's tokens unknown, encoded as plain words.
    path = tmp_path / "mateonly.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 32, generator=torch.Generator().manual_seed(3))}}, path)
    embedding = EmbeddingSpec("MateOnly", "1", str(path))
    jobs: dict[str, tuple[Job, str]] = {
        "head": (text_job(tiny_sd15, "a cat", (1,)), "A"),
        "mate": (replace(text_job(tiny_sd15, "a cat, mateonly mateonly_1", (1,)), embeddings=(embedding,)), "B"),
    }
    outcome, log = run_queued(engine, tiny_sd15, jobs)
    assert batches(log)[1] == set(jobs)
    assert_each_is_its_solo_render(engine, jobs, outcome)
    assert images(outcome["head"]) != images(outcome["mate"])


def test_batch_mates_are_picked_in_the_fair_order(engine: LocalEngine, tiny_sd15: Path) -> None:
    """Token A queues three jobs, then token B one, all of one batch key, two images a batch: B's
    job joins A's first rather than waiting behind A's second and third."""
    jobs: dict[str, tuple[Job, str]] = {
        **{f"a{i}": (text_job(tiny_sd15, seeds=(i,)), "A") for i in range(3)},
        "b0": (text_job(tiny_sd15, seeds=(9,)), "B"),
    }
    with batch_size(engine, 2):
        outcome, log = run_queued(engine, tiny_sd15, jobs)
    assert batches(log) == [{"blocker"}, {"a0", "b0"}, {"a1", "a2"}]
    assert all(isinstance(events[-1], Finished) for events in outcome.values())


def test_jobs_that_cannot_share_a_pass_or_would_overfill_it_run_apart(engine: LocalEngine, tiny_sd15: Path) -> None:
    jobs: dict[str, tuple[Job, str]] = {
        "four": (text_job(tiny_sd15, seeds=(1, 2, 3, 4)), "A"),
        "other-steps": (text_job(tiny_sd15, steps=2), "B"),
        "two": (text_job(tiny_sd15, seeds=(5, 6)), "C"),
        "one": (text_job(tiny_sd15, seeds=(7,)), "D"),
    }
    with batch_size(engine, 5):
        _, log = run_queued(engine, tiny_sd15, jobs)
    assert batches(log) == [{"blocker"}, {"four", "one"}, {"other-steps"}, {"two"}]


def test_cancelling_one_job_of_a_batch_leaves_the_others_finishing(engine: LocalEngine, tiny_sd15: Path) -> None:
    steps = 6
    jobs: dict[str, tuple[Job, str]] = {
        job_id: (text_job(tiny_sd15, seeds=(seed,), steps=steps), "A")
        for seed, job_id in enumerate(("first", "cancelled", "last"))
    }
    answers: list[bool] = []

    def cancel_at_step_two(job_id: str, event: JobEvent, handle: JobHandle) -> None:
        if job_id == "cancelled" and event == Progress(2, steps):
            answers.append(handle.cancel())

    outcome, log = run_queued(engine, tiny_sd15, jobs, cancel_at_step_two)
    assert answers == [True]
    assert batches(log)[1] == set(jobs)
    cancelled = outcome["cancelled"]
    assert cancelled[-1] == Cancelled("cancelled")
    assert len(progress_of(cancelled)) <= 3  # at most the step already under way after the cancel
    for job_id in ("first", "last"):
        assert progress_of(outcome[job_id])[-1] == (steps, steps)
    assert_each_is_its_solo_render(engine, {key: jobs[key] for key in ("first", "last")}, outcome)
    assert engine.status().queued == 0


def test_a_job_failing_in_a_batch_fails_alone(engine: LocalEngine, tiny_sd15: Path) -> None:
    """One job's weight overflows float32 (its images are NaN), another's prompt is longer than
    the server allows: each fails with its own message, and their batch-mate is unharmed."""
    limit, engine._max_prompt_chunks = engine._max_prompt_chunks, 2
    jobs: dict[str, tuple[Job, str]] = {
        "good": (text_job(tiny_sd15, "a cat", (1,)), "A"),
        "overflow": (text_job(tiny_sd15, "a (cat:1" + "0" * 40 + ")", (2,)), "A"),
        "too-long": (text_job(tiny_sd15, "a BREAK b BREAK c", (3,)), "B"),
    }
    try:
        outcome, log = run_queued(engine, tiny_sd15, jobs)
    finally:
        engine._max_prompt_chunks = limit
    assert batches(log)[1] == set(jobs)
    overflow, too_long = outcome["overflow"][-1], outcome["too-long"][-1]
    assert isinstance(overflow, Failed) and "NaN or infinite" in overflow.message
    assert isinstance(too_long, Failed) and "3 chunks" in too_long.message and too_long.status == 422
    assert_each_is_its_solo_render(engine, {"good": jobs["good"]}, outcome)


def test_a_failed_pass_runs_each_job_alone(engine: LocalEngine, tiny_sd15: Path) -> None:
    """When the shared pass itself fails (here: the UNet refuses more than one job's rows, as a
    device out of memory would), every job is run again alone and finishes as it would have."""
    jobs: dict[str, tuple[Job, str]] = {
        "one": (text_job(tiny_sd15, "a cat", (1,)), "A"),
        "two": (text_job(tiny_sd15, "a dog", (2,)), "B"),
    }
    unet = engine.pipeline(spec(tiny_sd15)).pipe.unet

    def refuse_batches(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if args[0].shape[0] > 2:  # one image with guidance: its negative and positive rows
            raise RuntimeError("out of memory")

    hook = unet.register_forward_pre_hook(refuse_batches)
    try:
        outcome, log = run_queued(engine, tiny_sd15, jobs)
    finally:
        hook.remove()
    assert batches(log)[1] == set(jobs)
    for job_id in jobs:
        steps = progress_of(outcome[job_id])
        assert steps[-1] == (STEPS, STEPS) and steps[0] == (1, STEPS)
    assert_each_is_its_solo_render(engine, jobs, outcome)
