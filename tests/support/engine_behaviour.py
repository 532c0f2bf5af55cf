"""The engine's promises, as tests every image model family inherits: the way diffusers'
`PipelineTesterMixin` serves every pipeline, a family's test class subclasses
`EngineBehaviourTests` and supplies its tiny components through two fixtures:

    class TestSD15Engine(EngineBehaviourTests):
        @pytest.fixture
        def family_model(self, tiny_sd15: Path) -> FamilyModel:
            return FamilyModel(family="sd15", path=tiny_sd15)

        @pytest.fixture
        def family_loras(self, lora_files: dict[str, Path]) -> tuple[Path, Path]:
            return lora_files["a"], lora_files["b"]

Every test goes through /api/inference on the session's shared engine (the conftest `api` and
`engine` fixtures) and judges only what a client or operator sees: image bytes and pixels, and
`engine.cache.loads`, never the engine's private state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from daguerre.engine.runtime.local import LocalEngine
from daguerre.protocol.inference import SCHEDULERS
from daguerre.services.catalog import Format, NewModel
from daguerre.services.uploads import prepare_image
from tests.support.api import Api, register
from tests.support.images import decode, photo, png

# The README's promise for seed + i: a single re-render may differ from the batched image by one
# intensity level in rare pixels (floating-point rounding of batched arithmetic).
BATCH_ROUNDING_LEVELS = 1
BATCH_ROUNDING_SHARE = 0.01  # "rare": at most this share of the channel values differ


@dataclass(frozen=True)
class FamilyModel:
    """A family's tiny checkpoint, as the catalog registers it."""

    family: str
    path: Path
    format: Format = Format.DIFFUSERS
    config_path: Path | None = None


def assert_same_but_for_batch_rounding(batched: bytes, alone: bytes) -> None:
    difference = np.abs(decode(batched).astype(int) - decode(alone).astype(int))
    assert difference.max() <= BATCH_ROUNDING_LEVELS, difference.max()
    assert (difference > 0).mean() <= BATCH_ROUNDING_SHARE, (difference > 0).mean()


class EngineBehaviourTests:
    """The engine's behaviours over one family's tiny model; see the module docstring."""

    @pytest.fixture
    def family_model(self) -> FamilyModel:
        raise NotImplementedError("a family's test class defines the family_model fixture")

    @pytest.fixture
    def family_loras(self) -> tuple[Path, Path]:
        """Two different LoRAs for the family; a family without LoRA support calls pytest.skip here."""
        raise NotImplementedError("a family's test class defines the family_loras fixture")

    @pytest.fixture
    def family_api(self, api: Api, family_model: FamilyModel) -> Api:
        """The api fixture rendering the family's model by default."""
        model_id = f"tiny-{family_model.family}"
        api.services.catalog.add(
            NewModel(
                path=family_model.path,
                format=family_model.format,
                id=model_id,
                title=model_id,
                family=family_model.family,
                config_path=family_model.config_path,
            )
        )
        return api.for_model(model_id)

    @pytest.fixture
    def with_loras(self, family_api: Api, family_loras: tuple[Path, Path]) -> Api:
        """The family's model with its two LoRAs registered as lora-a and lora-b."""
        register(family_api, "lora", family_loras[0], "lora-a")
        register(family_api, "lora", family_loras[1], "lora-b")
        return family_api

    # Seeds

    def test_output_has_the_requested_size(self, family_api: Api) -> None:
        (data,) = family_api.images(family_api.infer(width=192, height=128, seed=1))
        assert decode(data).shape == (128, 192, 3)

    def test_same_seed_same_bytes_and_other_seed_other_image(self, family_api: Api) -> None:
        first, second, other = (family_api.images(family_api.infer(seed=s))[0] for s in (11, 11, 12))
        assert first == second
        assert first != other

    def test_random_seed_is_reported_and_reproduces(self, family_api: Api) -> None:
        body = family_api.infer(seed=-1)
        (seed,) = body["seeds"]
        assert 0 <= seed < 2**32
        assert family_api.images(body)[0] == family_api.images(family_api.infer(seed=seed))[0]

    def test_image_i_of_a_batch_is_the_single_image_of_seed_plus_i(self, family_api: Api) -> None:
        body = family_api.infer(seed=100, num_images=3)
        assert body["seeds"] == [100, 101, 102]
        batch = family_api.images(body)
        for i, data in enumerate(batch):
            (alone,) = family_api.images(family_api.infer(seed=100 + i))
            assert_same_but_for_batch_rounding(data, alone)
        assert len(set(batch)) == 3

    @pytest.mark.parametrize("scheduler", SCHEDULERS)
    def test_every_scheduler_keeps_per_image_noise_in_a_batch(self, family_api: Api, scheduler: str) -> None:
        batch = family_api.images(family_api.infer(seed=50, num_images=2, scheduler=scheduler))
        (second,) = family_api.images(family_api.infer(seed=51, scheduler=scheduler))
        assert_same_but_for_batch_rounding(batch[1], second)

    # Schedulers

    def test_every_scheduler_renders_its_own_image_without_reloading(
        self, family_api: Api, engine: LocalEngine
    ) -> None:
        family_api.infer(seed=5)
        loads = engine.cache.loads
        outputs = {name: family_api.images(family_api.infer(seed=5, scheduler=name, steps=3))[0] for name in SCHEDULERS}
        assert engine.cache.loads == loads
        assert len(set(outputs.values())) == len(SCHEDULERS)
        for name, data in outputs.items():
            assert data.startswith(b"\x89PNG")
            pixels = decode(data)
            assert pixels.shape == (128, 128, 3) and pixels.std() > 0, name
        for name in SCHEDULERS:  # a scheduler's output does not depend on the one used before it
            assert family_api.images(family_api.infer(seed=5, scheduler=name, steps=3))[0] == outputs[name]

    # img2img

    def test_strength_zero_returns_the_prepared_base_image(self, family_api: Api) -> None:
        base = png(photo(200, 150))
        body = family_api.infer_with_image(base, image_strength=0, seed=1)
        expected = prepare_image(base, 128, 128, 10**8)
        assert family_api.images(body) == [expected]

    def test_strength_one_is_text_to_image_of_the_seed(self, family_api: Api) -> None:
        (text_only,) = family_api.images(family_api.infer(seed=5))
        for seed in (0, 1):
            body = family_api.infer_with_image(png(photo(seed=seed)), image_strength=1, seed=5)
            assert family_api.images(body) == [text_only]

    def test_img2img_same_seed_reproduces_and_the_base_image_matters(self, family_api: Api) -> None:
        first, second = png(photo(seed=0)), png(photo(seed=1))
        one = family_api.infer_with_image(first, image_strength=0.5, seed=9, num_images=2)
        assert one["error_code"] == 0 and one["seeds"] == [9, 10], one
        again = family_api.infer_with_image(first, image_strength=0.5, seed=9, num_images=2)
        other = family_api.infer_with_image(second, image_strength=0.5, seed=9, num_images=2)
        images = family_api.images(one)
        assert images == family_api.images(again)
        assert images[0] != images[1]
        assert images[0] != family_api.images(other)[0]
        assert images[0] != family_api.images(family_api.infer(seed=9))[0]
        assert decode(images[0]).shape == (128, 128, 3)

    def test_low_strength_stays_closer_to_the_base_than_high_strength(self, family_api: Api) -> None:
        base = png(photo(seed=3))
        # steps=10 so that 0.2 runs two denoising steps out of ten.
        prepared = decode(prepare_image(base, 128, 128, 10**8)).astype(float)
        distances = []
        for strength in (0.2, 0.9):
            body = family_api.infer_with_image(base, image_strength=strength, seed=2, steps=10)
            distances.append(np.abs(decode(family_api.images(body)[0]).astype(float) - prepared).mean())
        assert distances[0] < distances[1]

    # LoRAs

    def test_lora_never_leaks_and_never_reloads_the_base(self, with_loras: Api, engine: LocalEngine) -> None:
        def image(**fields: object) -> bytes:
            return with_loras.images(with_loras.infer(seed=11, **fields))[0]

        base = image()
        loads = engine.cache.loads
        with_a = image(lora="lora-a")
        with_b = image(lora="lora-b")
        assert image() == base
        assert image(lora="lora-a") == with_a
        assert len({base, with_a, with_b}) == 3
        assert image(lora="lora-a,lora-b") not in (base, with_a, with_b)
        assert image() == base  # nor do several at once
        assert engine.cache.loads == loads

    def test_lora_scale_several_loras_and_prompt_tags(self, with_loras: Api) -> None:
        def image(**fields: object) -> bytes:
            return with_loras.images(with_loras.infer(seed=11, **fields))[0]

        default = image(lora="lora-a")
        assert image(lora="lora-a", lora_scale="0.75") == default
        assert image(lora="lora-a", lora_scale="0.3") != default
        both = image(lora="lora-a,lora-b", lora_scale="0.75,0.5")
        assert both not in (default, image(lora="lora-b", lora_scale="0.5"))
        assert image(prompt="a cat <lora:lora-a:0.75> <lora:lora-b:0.5>") == both
        assert image(lora="lora-a", prompt="<lora:lora-b:0.5> a cat") == both
        assert image(prompt="a cat <lora:lora-a>") == image(lora="lora-a", lora_scale="1")

    # Prompts

    def test_prompt_weighting_changes_the_image_and_weight_one_does_not(self, family_api: Api) -> None:
        def image(prompt: str) -> bytes:
            return family_api.images(family_api.infer(seed=3, prompt=prompt))[0]

        plain = image("a red cat")
        assert image("a (red:1.5) cat") != plain
        assert image("a [red] cat") != plain
        assert image("a (red:1) cat") == plain

    def test_long_prompts_reach_the_model_past_the_first_chunk(self, family_api: Api) -> None:
        def image(**fields: object) -> bytes:
            return family_api.images(family_api.infer(seed=3, **fields))[0]

        # 75 single-token words fill CLIP's 77-token window (with its start and end tokens); what
        # follows them must still change the image.
        window = " ".join(["cat"] * 75)
        truncated = image(prompt=window)
        assert image(prompt=window + " red dog") != truncated
        # 100 words exceed the window; the tail must still reach the model.
        head = ", ".join(f"word{i}" for i in range(100))
        assert image(prompt=head + ", red") != image(prompt=head + ", blue")
        negative = ", ".join(["lowres"] * 150)  # clients send 300-token negative prompts
        assert image(negative_prompt=negative) != image()
