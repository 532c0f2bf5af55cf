"""The model cache's host-memory tier: what the device tier evicts waits in host RAM within its own
byte budget, LRU in both tiers, and comes back with a copy instead of a load from disk; /health
says what sits in each tier."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from daguerre.engine.jobs import ModelSpec, TextToImageJob
from daguerre.engine.runtime.local import LocalEngine
from daguerre.engine.runtime.memory import resident_bytes
from daguerre.engine.runtime.model_cache import HostTier, ModelCache
from daguerre.services.catalog import Format, NewModel
from daguerre.settings import Settings
from tests.support.api import serve

ONE = 64 * 64 * 4  # bytes of one 64x64 float32 Linear


def test_both_tiers_are_lru_within_their_budgets_and_a_swap_back_loads_nothing() -> None:
    moves: list[tuple[str, int]] = []

    def to_host(value: object) -> bool:
        assert isinstance(value, torch.nn.Linear)
        moves.append(("host", id(value)))
        return True

    def to_device(value: object) -> None:
        moves.append(("device", id(value)))

    cache: ModelCache[str] = ModelCache(ONE, name="model", host=HostTier(2 * ONE, to_host, to_device))
    modules = {name: torch.nn.Linear(64, 64, bias=False) for name in "abcd"}
    for name in "abc":
        cache.get(name, lambda name=name: modules[name])
    assert cache.keys() == ["c"] and cache.host_keys() == ["a", "b"]
    assert cache.host_resident() == [("a", ONE), ("b", ONE)] and cache.host_used_bytes() == 2 * ONE

    # a comes back from host memory, c goes there; nothing is loaded.
    assert cache.get("a", lambda: pytest.fail("a is in the host tier")) is modules["a"]
    assert cache.loads == 3 and cache.restores == 1
    assert cache.keys() == ["a"] and cache.host_keys() == ["b", "c"]
    assert moves[-2:] == [("host", id(modules["c"])), ("device", id(modules["a"]))]

    # A new model pushes a to host memory, which drops its least recently used entry, b.
    cache.get("d", lambda: modules["d"])
    assert cache.keys() == ["d"] and cache.host_keys() == ["c", "a"]
    assert cache.used_bytes() <= cache.budget_bytes and cache.host_used_bytes() <= 2 * ONE
    cache.get("b", lambda: modules["b"])  # dropped, so loaded again
    assert cache.loads == 5


def test_an_entry_sharing_tensors_with_a_resident_one_is_dropped_not_moved() -> None:
    shared = torch.nn.Linear(64, 64, bias=False)
    moved: list[object] = []
    cache: ModelCache[str] = ModelCache(
        3 * ONE, name="model", host=HostTier(10 * ONE, lambda value: not moved.append(value), lambda _: None)
    )
    cache.get("base", lambda: shared)
    cache.get("built-on-base", lambda: torch.nn.Sequential(shared, torch.nn.Linear(64, 64, bias=False)))
    cache.get("other", lambda: torch.nn.Sequential(*(torch.nn.Linear(64, 64, bias=False) for _ in range(2))))
    # base (least recently used) shares its weight with built-on-base, still on the device, so it
    # is dropped; built-on-base, evicted next, shares with nothing left and moves.
    assert cache.keys() == ["other"] and cache.host_keys() == ["built-on-base"]
    assert len(moved) == 1 and isinstance(moved[0], torch.nn.Sequential) and moved[0][0] is shared


def loads_metric() -> float:
    return REGISTRY.get_sample_value("daguerre_model_loads_total", {"cache": "model"}) or 0.0


def test_engine_swaps_back_from_host_memory_without_reading_the_disk(tiny_sd15: Path, tmp_path: Path) -> None:
    # Three models (copies of the tiny one); the device tier holds one, the host tier two.
    folders = {name: shutil.copytree(tiny_sd15, tmp_path / name) for name in ("one", "two", "three")}
    specs = {name: ModelSpec(name, "1", str(folder), "diffusers", "sd15") for name, folder in folders.items()}
    probe = LocalEngine(cache_dir=tmp_path / "cache", device="cpu")
    size = resident_bytes(probe.pipeline(specs["one"]))
    engine = LocalEngine(
        cache_dir=tmp_path / "cache", device="cpu", model_cache_bytes=size * 3 // 2, host_cache_bytes=size * 5 // 2
    )

    def job(name: str) -> TextToImageJob:
        return TextToImageJob(specs[name], "a cat", "", 64, 64, 2, 7.0, "K_EULER", (3,))

    first = {name: engine.run(job(name)) for name in ("one", "two", "three")}
    assert engine.cache.keys() == [specs["three"]] and engine.cache.host_keys() == [specs["one"], specs["two"]]
    status = engine.status()
    assert [(m.name, m.bytes) for m in status.host_resident] == [("one@1", size), ("two@1", size)]
    assert status.host_used_bytes == 2 * size <= status.host_budget_bytes

    # The files are gone: a swap back that read them would fail.
    for folder in folders.values():
        shutil.rmtree(folder)
    loads_before, metric_before = engine.cache.loads, loads_metric()
    for name in ("one", "two", "one", "three"):
        assert engine.run(job(name)) == first[name]
    assert engine.cache.loads == loads_before == 3 and loads_metric() == metric_before
    assert engine.cache.restores == 4
    assert engine.cache.keys() == [specs["three"]] and engine.cache.host_keys() == [specs["two"], specs["one"]]


def test_health_reports_the_host_tier(tiny_sd15: Path, tmp_path: Path) -> None:
    probe = LocalEngine(cache_dir=tmp_path / "cache", device="cpu")
    size = resident_bytes(probe.pipeline(ModelSpec("tiny", "1", str(tiny_sd15), "diffusers", "sd15")))
    engine = LocalEngine(
        cache_dir=tmp_path / "cache", device="cpu", model_cache_bytes=size * 3 // 2, host_cache_bytes=size * 3
    )
    second = shutil.copytree(tiny_sd15, tmp_path / "second")
    with serve(Settings(data_dir=tmp_path / "data"), engine, tiny_sd15, credits=10) as api:
        api.services.catalog.add(NewModel(path=second, format=Format.DIFFUSERS, id="second", title="Second"))
        assert api.infer(seed=1)["error_code"] == 0
        assert api.for_model("second").infer(seed=1)["error_code"] == 0
        memory = api.client.get("/health").json()["memory"]
    assert [entry["model"] for entry in memory["models"]["resident"]] == ["second@1"]
    assert memory["host"] == {
        "budget_bytes": size * 3,
        "used_bytes": size,
        "resident": [{"model": "tiny@1", "bytes": size}],
    }
    assert memory["device_peak_bytes"] is None  # CPU: no device memory apart from RAM
