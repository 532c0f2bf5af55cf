"""img2img through /api/inference: the strength ends, reproducibility, and the base image's effect."""

from __future__ import annotations

import numpy as np

from daguerre.services.uploads import prepare_image
from tests.support.api import Api
from tests.support.images import decode, photo, png


def test_strength_zero_returns_the_prepared_base_image(api: Api) -> None:
    base = png(photo(200, 150))
    body = api.infer_with_image(base, image_strength=0, seed=1)
    assert body["error_code"] == 0, body
    expected = prepare_image(base, 128, 128, 10**8)
    assert api.fetch(body["images"][0]) == expected


def test_strength_one_ignores_the_base_image(api: Api) -> None:
    text_only = api.fetch(api.infer(seed=5)["images"][0])
    for seed in (0, 1):
        body = api.infer_with_image(png(photo(seed=seed)), image_strength=1, seed=5)
        assert api.fetch(body["images"][0]) == text_only


def test_same_seed_reproduces_and_the_base_image_matters(api: Api) -> None:
    first, second = png(photo(seed=0)), png(photo(seed=1))
    one = api.infer_with_image(first, image_strength=0.5, seed=9, num_images=2)
    assert one["error_code"] == 0 and one["seeds"] == [9, 10], one
    again = api.infer_with_image(first, image_strength=0.5, seed=9, num_images=2)
    other = api.infer_with_image(second, image_strength=0.5, seed=9, num_images=2)
    images = [api.fetch(u) for u in one["images"]]
    assert images == [api.fetch(u) for u in again["images"]]
    assert images[0] != images[1]
    assert images[0] != api.fetch(other["images"][0])
    text_only = api.fetch(api.infer(seed=9)["images"][0])
    assert images[0] != text_only
    assert decode(images[0]).shape == (128, 128, 3)


def test_low_strength_stays_closer_to_the_base_than_high_strength(api: Api) -> None:
    base = png(photo(seed=3))
    # steps=10 so that 0.2 runs two denoising steps out of ten.
    prepared = decode(prepare_image(base, 128, 128, 10**8)).astype(float)
    distances = []
    for strength in (0.2, 0.9):
        body = api.infer_with_image(base, image_strength=strength, seed=2, steps=10)
        distances.append(np.abs(decode(api.fetch(body["images"][0])).astype(float) - prepared).mean())
    assert distances[0] < distances[1]


def test_image_strength_out_of_range(api: Api) -> None:
    body = api.infer_with_image(png(photo()), image_strength=1.5)
    assert body == {"error_code": 1, "message": "invalid image_strength '1.5': must be a number from 0 to 1"}
