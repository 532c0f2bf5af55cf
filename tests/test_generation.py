"""Generation through the real engine and tiny real-architecture models."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daguerre.engine.runtime.local import LocalEngine
from daguerre.protocol.inference import SCHEDULERS
from daguerre.services.catalog import Format, NewModel
from tests.support.api import Api


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def images_of(api: Api, body: dict) -> list[bytes]:
    assert body["error_code"] == 0, body
    return [api.fetch(url) for url in body["images"]]


def test_output_has_the_requested_size(api: Api) -> None:
    (data,) = images_of(api, api.infer(width=192, height=128, seed=1))
    assert Image.open(io.BytesIO(data)).size == (192, 128)


def test_same_seed_same_bytes_and_other_seed_other_image(api: Api) -> None:
    first, second, other = (images_of(api, api.infer(seed=s))[0] for s in (11, 11, 12))
    assert first == second
    assert first != other


def test_random_seed_is_reported_and_reproduces(api: Api) -> None:
    body = api.infer(seed=-1)
    (seed,) = body["seeds"]
    assert 0 <= seed < 2**32
    assert images_of(api, body)[0] == images_of(api, api.infer(seed=seed))[0]


def test_image_i_of_a_batch_is_the_single_image_of_seed_plus_i(api: Api) -> None:
    batch = images_of(api, api.infer(seed=100, num_images=3))
    for i, data in enumerate(batch):
        (alone,) = images_of(api, api.infer(seed=100 + i))
        # Batched float arithmetic may round a channel one level differently; nothing more.
        assert np.abs(pixels(data) - pixels(alone)).max() <= 2
    assert len({bytes(b) for b in batch}) == 3


def test_every_scheduler_renders_without_reloading_the_model(api: Api, engine: LocalEngine) -> None:
    api.infer(seed=5)
    loads = engine.cache.loads
    outputs = {name: images_of(api, api.infer(seed=5, scheduler=name, steps=3))[0] for name in SCHEDULERS}
    assert engine.cache.loads == loads
    assert len(set(outputs.values())) == len(SCHEDULERS)
    for name in SCHEDULERS:  # a scheduler's output does not depend on the one used before it
        assert images_of(api, api.infer(seed=5, scheduler=name, steps=3))[0] == outputs[name]


def test_prompt_weighting_and_long_prompts_change_the_image(api: Api) -> None:
    plain = images_of(api, api.infer(seed=3, prompt="a red cat"))[0]
    weighted = images_of(api, api.infer(seed=3, prompt="a (red:1.5) cat"))[0]
    assert plain != weighted
    # 100 words exceed CLIP's 77-token window; the tail must still reach the model.
    head = ", ".join(f"word{i}" for i in range(100))
    long_a = images_of(api, api.infer(seed=3, prompt=head + ", red"))[0]
    long_b = images_of(api, api.infer(seed=3, prompt=head + ", blue"))[0]
    assert long_a != long_b
    negative = ", ".join(["lowres"] * 150)  # clients send 300-token negative prompts
    assert api.infer(seed=3, negative_prompt=negative)["error_code"] == 0


def test_resident_models_are_not_reloaded_and_lru_evicts(api: Api, engine: LocalEngine, tiny_sd15) -> None:
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
        assert [key.id for key in engine.cache] == ["tiny"]
    finally:
        engine.cache.capacity = capacity


def test_single_file_checkpoint_renders_like_its_diffusers_folder(api: Api, tiny_single_file) -> None:
    checkpoint, skeleton = tiny_single_file
    api.services.catalog.add(
        NewModel(path=checkpoint, format=Format.SINGLE_FILE, id="single", title="Single", config_path=skeleton)
    )
    folder = images_of(api, api.infer(seed=8))[0]
    single = images_of(api, api.infer(seed=8, model_id="single"))[0]
    assert folder == single


def test_versions_latest_by_default_and_selectable(api: Api, tiny_sd15: Path) -> None:
    from daguerre.demo.tiny_models import build_tiny_sd15

    other_weights = build_tiny_sd15(tiny_sd15.parent / "tiny-v2", seed=1)
    catalog = api.services.catalog
    catalog.add(NewModel(path=other_weights, format=Format.DIFFUSERS, id="tiny", version="v2", title="Tiny"))
    v1 = images_of(api, api.infer(seed=4, version="1"))[0]
    v2 = images_of(api, api.infer(seed=4, version="v2"))[0]
    latest = images_of(api, api.infer(seed=4))[0]
    assert latest == v2 != v1
    body = api.infer(version="v3")
    assert body["error_code"] == 1 and "known versions: 1, v2" in body["message"]


@pytest.mark.parametrize("scheduler", ["K_EULER_ANCESTRAL"])
def test_ancestral_batches_keep_per_image_noise(api: Api, scheduler: str) -> None:
    batch = images_of(api, api.infer(seed=50, num_images=2, scheduler=scheduler))
    (second,) = images_of(api, api.infer(seed=51, scheduler=scheduler))
    assert np.abs(pixels(batch[1]) - pixels(second)).max() <= 2
