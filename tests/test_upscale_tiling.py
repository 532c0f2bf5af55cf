"""The tiled ESRGAN upscale against the model run on the whole image at once."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from spandrel import ImageModelDescriptor

from daguerre.engine.jobs import ModelSpec, Tiling
from daguerre.engine.pipelines.upscaling import (
    load_upscaler,
    tile_starts,
    upscale_image,
    upscale_tiled,
)


@pytest.fixture(scope="module")
def models(tiny_upscalers: dict[int, Path]) -> dict[int, ImageModelDescriptor]:
    def load(scale: int, path: Path) -> ImageModelDescriptor:
        spec = ModelSpec(f"x{scale}", "1", str(path), "single_file", "esrgan")
        return load_upscaler(spec, torch.device("cpu"), torch.float32)

    return {scale: load(scale, path) for scale, path in tiny_upscalers.items()}


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random but photo-like (smooth) content, so the model's output is not just noise either."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC))


def untiled(model: ImageModelDescriptor, image: np.ndarray) -> np.ndarray:
    output = model(torch.tensor(image).permute(2, 0, 1).unsqueeze(0).float() / 255)[0]
    return (output * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize(("tile", "overlap"), [(16, 0), (16, 8), (64, 16), (100, 7)])
def test_tiles_cover_the_image_and_overlap_by_at_least_the_setting(tile: int, overlap: int) -> None:
    for length in range(1, 400):
        starts = tile_starts(length, tile, overlap)
        size = min(tile, length)
        assert starts[0] == 0 and starts[-1] + size == length
        assert all(b - a > 0 and a + size - b >= overlap for a, b in itertools.pairwise(starts))


@pytest.mark.parametrize("scale", [2, 4])
def test_an_image_within_one_tile_equals_the_untiled_run(models: dict[int, ImageModelDescriptor], scale: int) -> None:
    image = smooth_image(40, 56)
    tiled = upscale_tiled(models[scale], image, Tiling(tile=64, overlap=16))
    reference = untiled(models[scale], image)
    assert tiled.shape == (40 * scale, 56 * scale, 3)
    assert np.array_equal(tiled, reference)


@pytest.mark.parametrize("scale", [2, 4])
def test_many_tiles_match_the_untiled_run_and_blending_hides_the_seams(
    models: dict[int, ImageModelDescriptor], scale: int
) -> None:
    image = smooth_image(72, 96, seed=scale)
    reference = untiled(models[scale], image).astype(int)
    blended = np.abs(upscale_tiled(models[scale], image, Tiling(tile=48, overlap=16)).astype(int) - reference)
    butted = np.abs(upscale_tiled(models[scale], image, Tiling(tile=48, overlap=0)).astype(int) - reference)
    assert reference.std() > 10  # the random model's output does depend on the image
    assert blended.mean() < 1.0 and np.percentile(blended, 99) <= 8
    assert blended.mean() < butted.mean() / 2


def test_fractional_sizes_run_the_model_until_reached_then_lanczos(models: dict[int, ImageModelDescriptor]) -> None:
    image = smooth_image(30, 40)
    tiling = Tiling(tile=64, overlap=16)
    # 3.75x with only a 2x model: two passes (160x120), then down to the exact size.
    result = upscale_image(models[2], Image.fromarray(image), 150, 113, tiling)
    twice = upscale_tiled(models[2], upscale_tiled(models[2], image, tiling), tiling)
    expected = Image.fromarray(twice).resize((150, 113), Image.Resampling.LANCZOS)
    assert result.size == (150, 113)
    assert np.array_equal(np.asarray(result), np.asarray(expected))
    # Without a model, Lanczos does it all.
    plain = upscale_image(None, Image.fromarray(image), 100, 75, tiling)
    lanczos = Image.fromarray(image).resize((100, 75), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(plain), np.asarray(lanczos))
