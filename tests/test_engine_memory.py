"""Memory the engine holds stays within its bounds: the model caches in bytes, the LoRA adapters
of a pipeline by count and bytes; /health says what is resident and its size."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from daguerre.demo.tiny_models import build_tiny_lora
from daguerre.engine.jobs import LoraSpec, ModelSpec, TextToImageJob
from daguerre.engine.loading.lora import adapter_name, adapter_tensors
from daguerre.engine.runtime.local import LocalEngine
from daguerre.engine.runtime.memory import resident_bytes
from daguerre.engine.runtime.model_cache import ModelCache
from tests.support.api import Api


def linear(size: int) -> torch.nn.Linear:
    return torch.nn.Linear(size, size, bias=False)  # size * size * 4 bytes


def test_cache_evicts_least_recently_used_by_bytes() -> None:
    cache = ModelCache(budget_bytes=3 * 64 * 64 * 4)
    modules = {name: linear(64) for name in "abcd"}
    for name in "abc":
        cache.get(name, lambda name=name: modules[name])
    assert cache.used_bytes() == 3 * 64 * 64 * 4
    cache.get("a", lambda: pytest.fail("a is resident"))  # now b is the least recently used
    cache.get("d", lambda: modules["d"])
    assert cache.keys() == ["c", "a", "d"]
    assert cache.resident() == [("c", 16384), ("a", 16384), ("d", 16384)]
    assert cache.used_bytes() <= cache.budget_bytes


def test_the_estimate_makes_room_before_loading_and_shared_tensors_count_once() -> None:
    cache = ModelCache(budget_bytes=4 * 64 * 64 * 4)
    shared = linear(64)
    cache.get("a", lambda: shared)
    cache.get("b", lambda: linear(64))
    cache.get("a-and-more", lambda: torch.nn.Sequential(shared, linear(64)))  # shares a's weight
    assert cache.used_bytes() == 3 * 64 * 64 * 4
    evicted: list[str] = []

    def load() -> torch.nn.Module:
        evicted.extend(key for key in ("a", "b") if key not in cache)
        return linear(64)

    # Announced as two modules' worth: a goes first (least recently used) but frees nothing, since
    # a-and-more holds its weight; then b, before the loader runs.
    cache.get("big", load, estimate=2 * 64 * 64 * 4)
    assert evicted == ["a", "b"]
    assert cache.used_bytes() == 3 * 64 * 64 * 4


def test_a_model_larger_than_the_budget_is_resident_alone(caplog: pytest.LogCaptureFixture) -> None:
    cache = ModelCache(budget_bytes=64 * 64 * 4, name="model")
    cache.get("small", lambda: linear(32))
    with caplog.at_level(logging.WARNING):
        cache.get("huge", lambda: linear(128))
    assert cache.keys() == ["huge"]
    assert "more than the whole model cache budget" in caplog.text


def test_engine_budget_holds_one_tiny_pipeline_and_health_reports_sizes(api: Api, tiny_sd15: Path) -> None:
    body = api.client.get("/health").json()
    assert {"status", "device", "dtype", "queued", "loaded_models"} <= body.keys()
    api.infer(seed=1)
    body = api.client.get("/health").json()
    models = body["memory"]["models"]
    tiny = [entry for entry in models["resident"] if entry["model"] == "tiny@1"]
    assert tiny and tiny[0]["bytes"] > 1_000_000
    assert "tiny@1" in body["loaded_models"]
    assert 0 < models["used_bytes"] <= models["budget_bytes"]
    assert body["memory"]["auxiliary"]["budget_bytes"] > 0

    # A budget of 1.5 tiny pipelines keeps one of two resident.
    engine = LocalEngine(cache_dir=tiny_sd15.parent, device="cpu")
    first, second = (ModelSpec(name, "1", str(tiny_sd15), "diffusers", "sd15") for name in ("first", "second"))
    size = resident_bytes(engine.pipeline(first))
    assert [(m.name, m.bytes) for m in engine.status().resident] == [("first@1", size)]
    engine.cache.budget_bytes = size * 3 // 2
    engine.pipeline(second)
    assert engine.cache.keys() == [second]
    assert engine.status().used_bytes == size
    assert [(m.name, m.bytes) for m in engine.status().resident] == [("second@1", size)]


@pytest.fixture(scope="module")
def many_loras(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """50 different LoRAs of the tiny model, each on the text encoder and the UNet's middle block
    (few layers, so that 50 loads stay fast), written from one file's keys with random weights."""
    folder = tmp_path_factory.mktemp("many-loras")
    template = load_file(str(build_tiny_lora(tiny_sd15, folder / "template.safetensors", "kohya", seed=7)))
    keys = [key for key in template if key.startswith("lora_te_") or "_mid_block_" in key]
    generator = torch.Generator().manual_seed(0)
    paths = []
    for index in range(50):
        state = {
            key: template[key] if key.endswith(".alpha") else torch.randn(template[key].shape, generator=generator)
            for key in keys
        }
        paths.append(folder / f"lora-{index}.safetensors")
        save_file(state, str(paths[-1]))
    return paths


def test_fifty_loras_stay_within_the_bounds_and_the_base_output_returns(
    tiny_sd15: Path, many_loras: list[Path]
) -> None:
    model = ModelSpec("tiny", "1", str(tiny_sd15), "diffusers", "sd15")
    # Every file has the same float32 tensors, loaded as they are into the float32 CPU pipeline.
    one = sum(t.numel() * t.element_size() for k, t in load_file(str(many_loras[0])).items() if "alpha" not in k)

    # The byte bound (2.5 adapters) binds before the count bound (4).
    engine = LocalEngine(cache_dir=tiny_sd15.parent, device="cpu", max_loras=4, max_lora_bytes=one * 5 // 2)
    job = TextToImageJob(model, "a cat", "", 64, 64, 2, 7.0, "K_EULER", (5,))
    base = engine.run(job)
    loaded = engine.pipeline(model)
    for index, path in enumerate(many_loras):
        spec = LoraSpec(f"lora-{index}", "1", str(path), 0.8)
        engine.loras(loaded, (spec,))
        state = loaded.loras
        assert len(state.loaded) <= 2 and state.loaded_bytes <= one * 5 // 2
        assert adapter_name(spec) in state.loaded
    names = list(loaded.loras.loaded)
    held = [t.numel() * t.element_size() for name in names for t in adapter_tensors(loaded.pipe, name)]
    assert sum(held) == loaded.loras.loaded_bytes == 2 * one  # measured on the pipeline, not just booked
    peft_names = {key for component in (loaded.pipe.unet, loaded.pipe.text_encoder) for key in component.peft_config}
    assert peft_names == set(names)  # the others were deleted from the pipeline
    assert engine.run(job) == base
    wrapped_layers = len(loaded.loras.originals)
    assert 0 < wrapped_layers <= 16  # base weights saved only for layers today's adapters wrap


def test_the_count_bound_unloads_the_least_recently_used(tiny_sd15: Path, many_loras: list[Path]) -> None:
    engine = LocalEngine(cache_dir=tiny_sd15.parent, device="cpu", max_loras=3, max_lora_bytes=10**12)
    loaded = engine.pipeline(ModelSpec("tiny", "1", str(tiny_sd15), "diffusers", "sd15"))
    specs = [LoraSpec(f"lora-{index}", "1", str(path), 0.8) for index, path in enumerate(many_loras[:5])]
    for spec in specs[:3]:
        engine.loras(loaded, (spec,))
    engine.loras(loaded, (specs[0],))  # used again: lora-1 is now the least recently used
    engine.loras(loaded, (specs[3], specs[4]))
    assert list(loaded.loras.loaded) == [adapter_name(specs[i]) for i in (0, 3, 4)]
