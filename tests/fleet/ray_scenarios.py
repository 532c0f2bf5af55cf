"""The Ray Serve engine on a real Ray cluster: run by tests/test_fleet_ray.py inside a fresh network
namespace (pytest on this file), never collected by the suite itself.

One cluster (2 CPUs) and one Serve application of two CPU replicas (half a CPU each, one model
each) serve the whole module, in order: affinity under concurrent load, progress and cancel, a
replica killed mid-job (the job runs again and Ray replaces the replica), then a gateway app with
`engine = "ray"`: a full HTTP request, and a replica killed under a job that may not run again
(failed and refunded).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from fastapi.testclient import TestClient

from daguerre.app import create_app, engine_options
from daguerre.demo.tiny_models import build_demo_sd15
from daguerre.engine.client import JobHandle
from daguerre.engine.jobs import (
    Cancelled,
    Finished,
    JobEvent,
    ModelSpec,
    Progress,
    Queued,
    Started,
    TextToImageJob,
)
from daguerre.engine.ray.client import RayEngineClient
from daguerre.services.catalog import Format, NewModel
from daguerre.settings import RaySettings, Settings
from tests.support.api import Api
from tests.support.ray_cluster import Cluster, ray_cluster

WAIT_S = 90  # one job, or one replica to start, on two busy cores
MODELS = ("alpha", "beta")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with ray_cluster(num_cpus=2) as running:
        yield running


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleet")


@pytest.fixture(scope="module")
def models(data_dir: Path) -> dict[str, Path]:
    return {name: build_demo_sd15(data_dir / "models" / name, seed=index) for index, name in enumerate(MODELS)}


def ray_settings(cluster: Cluster, **changes: Any) -> RaySettings:
    # Two replicas on CPUs, one model each: a job routed to the wrong replica would load.
    base = {"address": cluster.address, "num_gpus": 0, "num_cpus": 0.5, "min_replicas": 2, "max_replicas": 2}
    return RaySettings(**{**base, "max_models_per_replica": 1, **changes})


@pytest.fixture(scope="module")
def settings(cluster: Cluster, data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir / "gateway", engine="ray", ray=ray_settings(cluster), device="cpu")


@pytest.fixture(scope="module")
def engine(settings: Settings) -> RayEngineClient:
    """The first gateway's engine: it deploys the application."""
    client = RayEngineClient(settings.ray, engine_options(settings), max_queue=64)
    asyncio.run(asyncio.wait_for(client.start(), WAIT_S * 2))
    return client


def job(models: dict[str, Path], name: str, steps: int = 2, seed: int = 1) -> TextToImageJob:
    model = ModelSpec(id=name, version="1", path=str(models[name]), format="diffusers", family="sd15")
    return TextToImageJob(model, "a lighthouse", "", 64, 64, steps, 7.5, "DDIM", (seed,))


async def collect(handle: JobHandle, on_event: Any = None) -> list[JobEvent]:
    events: list[JobEvent] = []
    async with asyncio.timeout(WAIT_S):
        async for event in handle.events():
            events.append(event)
            if on_event is not None:
                await on_event(event)
    return events


def loads(engine: RayEngineClient) -> dict[str, int]:
    return {report.replica: report.model_loads for report in engine.replicas()}


def kill(actor_name: str) -> None:
    ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)


def wait_for_replicas(engine: RayEngineClient, count: int, without: str) -> set[str]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        alive = engine.alive_replicas()
        if len(alive) == count and without not in alive:
            return alive
        time.sleep(0.5)
    raise AssertionError(f"Ray did not replace {without} within {WAIT_S} s: {engine.alive_replicas()}")


def test_two_models_stay_on_their_replicas_under_concurrent_load(
    engine: RayEngineClient, models: dict[str, Path]
) -> None:
    async def scenario() -> tuple[dict[str, int], dict[str, int]]:
        for index, name in enumerate(MODELS):  # warm-up: each model loads once, somewhere
            events = await collect(await engine.submit(f"warm-{name}", job(models, name, seed=index), "w"))
            assert isinstance(events[-1], Finished), events[-1]
        warm = loads(engine)
        # 24 jobs alternating the two models, all at once: each replica queues its model's jobs.
        handles = [
            await engine.submit(f"mix-{index}", job(models, MODELS[index % 2], seed=index), f"owner-{index % 3}")
            for index in range(24)
        ]
        outcomes = await asyncio.gather(*(collect(handle) for handle in handles))
        assert all(isinstance(events[-1], Finished) for events in outcomes)
        return warm, loads(engine)

    warm, after = asyncio.run(scenario())
    assert sum(warm.values()) == 2 and len(warm) == 2, warm  # one model on each replica
    assert after == warm, f"model loads after warm-up: {warm} -> {after}"
    assert sorted(model for report in engine.replicas() for model in report.loaded_models) == ["alpha@1", "beta@1"]


def test_progress_streams_back_and_cancel_reaches_the_replica(engine: RayEngineClient, models: dict[str, Path]) -> None:
    async def scenario() -> tuple[list[JobEvent], list[JobEvent]]:
        handle = await engine.submit("long", job(models, "alpha", steps=40), "a")

        async def cancel_at_step_two(event: JobEvent) -> None:
            if event == Progress(2, 40):
                assert handle.cancel()

        cancelled = await collect(handle, cancel_at_step_two)
        # The replica's LocalEngine stopped the job: the next one there starts at once.
        after = await collect(await engine.submit("after", job(models, "alpha", steps=3), "a"))
        return cancelled, after

    cancelled, after = asyncio.run(scenario())
    assert cancelled[0] == Queued(0) and Started() in cancelled, cancelled
    assert cancelled[cancelled.index(Started()) + 1 : cancelled.index(Progress(2, 40)) + 1] == [
        Progress(1, 40),
        Progress(2, 40),
    ]
    assert cancelled[-1] == Cancelled("cancelled")
    assert [event for event in after if isinstance(event, Progress)] == [Progress(1, 3), Progress(2, 3), Progress(3, 3)]
    assert isinstance(after[-1], Finished)
    replica = next(report for report in engine.replicas() if "alpha@1" in report.loaded_models)
    assert replica.queued == 0  # nothing left running there


def test_a_job_whose_replica_is_killed_runs_again_and_ray_replaces_the_replica(
    engine: RayEngineClient, models: dict[str, Path]
) -> None:
    async def scenario() -> tuple[list[JobEvent], list[JobEvent], str]:
        reference = await collect(await engine.submit("reference", job(models, "beta", steps=12, seed=7), "k"))
        handle = await engine.submit("killed", job(models, "beta", steps=12, seed=7), "k")
        victims: list[str] = []

        async def kill_at_step_three(event: JobEvent) -> None:
            if event == Progress(3, 12) and not victims:
                replica = engine.replica_of("killed")
                assert replica is not None
                victims.append(replica)
                await asyncio.to_thread(kill, replica)

        return reference, await collect(handle, kill_at_step_three), victims[0]

    reference, events, victim = asyncio.run(scenario())
    # It ran again from the start, elsewhere, to the same bytes (same seeds).
    assert events.count(Started()) == 1 and events.count(Progress(3, 12)) == 2, events
    assert isinstance(events[-1], Finished) and isinstance(reference[-1], Finished)
    assert events[-1].result == reference[-1].result
    assert len(wait_for_replicas(engine, 2, without=victim)) == 2


@pytest.fixture(scope="module")
def api(settings: Settings, models: dict[str, Path], engine: RayEngineClient) -> Iterator[Api]:
    """A second gateway, the whole app with `engine = "ray"`: it attaches to the running
    application. A job whose replica dies may not run again here (retries_on_replica_loss 0)."""
    gateway = settings.model_copy(update={"ray": settings.ray.model_copy(update={"retries_on_replica_loss": 0})})
    with TestClient(create_app(gateway), base_url="http://testserver") as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        assert isinstance(services.engine, RayEngineClient)
        for name, path in models.items():
            services.catalog.add(NewModel(path=path, format=Format.DIFFUSERS, id=name, title=name))
        token, _ = services.accounts.create_token(name="fleet", credits=10)
        yield Api(client, token, model_id="alpha")


def test_an_http_request_runs_on_the_cluster(api: Api) -> None:
    body = api.infer(width=128, height=128, steps=3, seed=5)
    assert body["error_code"] == 0, body
    assert api.images(body)[0].startswith(b"\x89PNG")
    assert api.balance() == pytest.approx(10 - body["credit_cost"])
    health = api.client.get("/health").json()
    assert health["device"].startswith("ray: ") and health["replicas"], health
    assert {"alpha@1"} <= set(health["loaded_models"]), health
    metrics = api.client.get("/metrics").text
    assert "daguerre_replica_model_loads{replica=" in metrics


def test_a_job_whose_replica_is_killed_fails_cleanly_and_is_refunded(api: Api) -> None:
    engine = api.services.engine
    assert isinstance(engine, RayEngineClient)
    before = api.balance()
    queued = api.infer(width=128, height=128, steps=40, seed=9, **{"async": "true"})
    assert queued["error_code"] == 0, queued
    inf_id = queued["inf_id"]
    deadline = time.monotonic() + WAIT_S
    while (status := api.client.get(f"/api/jobs/{inf_id}", params={"access_token": api.token}).json()).get(
        "progress"
    ) is None:
        assert status["status"] in ("queued", "running") and time.monotonic() < deadline, status
        time.sleep(0.05)
    replica = engine.replica_of(inf_id)
    assert replica is not None
    kill(replica)
    while (status := api.client.get(f"/api/jobs/{inf_id}", params={"access_token": api.token}).json())[
        "status"
    ] == "running":
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["status"] == "failed", status
    assert "replica was lost" in status["message"] and "refunded" in status["message"], status
    assert status["credit_cost"] == 0
    assert api.balance() == pytest.approx(before)
