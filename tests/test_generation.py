"""Generation through the real engine beyond what every family inherits from
tests/support/engine_behaviour.py: the model cache, single-file checkpoints and versions."""

from __future__ import annotations

from pathlib import Path

from daguerre.demo.tiny_models import build_tiny_sd15
from daguerre.engine.runtime.local import LocalEngine
from daguerre.services.catalog import Format, NewModel
from tests.support.api import Api


def test_resident_models_are_not_reloaded_and_lru_evicts(api: Api, engine: LocalEngine, tiny_sd15: Path) -> None:
    api.infer(seed=1)
    loads = engine.cache.loads
    api.infer(seed=2)
    assert engine.cache.loads == loads
    capacity, engine.cache.capacity = engine.cache.capacity, 1
    try:
        api.services.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="other", title="Other"))
        api.infer(seed=1, model_id="other")  # evicts "tiny"
        api.infer(seed=1)
        assert engine.cache.loads == loads + 2
        assert [key.id for key in engine.cache.keys()] == ["tiny"]  # noqa: SIM118  (a cache, not a dict)
    finally:
        engine.cache.capacity = capacity


def test_single_file_checkpoint_renders_like_its_diffusers_folder(
    api: Api, tiny_single_file: tuple[Path, Path]
) -> None:
    checkpoint, skeleton = tiny_single_file
    api.services.catalog.add(
        NewModel(path=checkpoint, format=Format.SINGLE_FILE, id="single", title="Single", config_path=skeleton)
    )
    folder = api.images(api.infer(seed=8))[0]
    single = api.images(api.infer(seed=8, model_id="single"))[0]
    assert folder == single


def test_versions_latest_by_default_and_selectable(api: Api, tiny_sd15: Path) -> None:
    other_weights = build_tiny_sd15(tiny_sd15.parent / "tiny-v2", seed=1)
    catalog = api.services.catalog
    catalog.add(NewModel(path=other_weights, format=Format.DIFFUSERS, id="tiny", version="v2", title="Tiny"))
    v1 = api.images(api.infer(seed=4, version="1"))[0]
    v2 = api.images(api.infer(seed=4, version="v2"))[0]
    latest = api.images(api.infer(seed=4))[0]
    assert latest == v2 != v1
    body = api.infer(version="v3")
    assert body["error_code"] == 1 and "known versions: 1, v2" in body["message"]
