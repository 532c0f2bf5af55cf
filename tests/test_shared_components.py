"""Task pipelines (img2img, ControlNet, AnimateDiff) are built on the resident text-to-image
pipeline's own modules and must leave them as they are: same objects, same dtype. (diffusers'
from_pipe casts shared modules to float32 unless told their dtype, which on a half-precision GPU
would silently convert the cached pipeline.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, DiffusionPipeline, MotionAdapter, StableDiffusionPipeline

from daguerre.demo.tiny_models import build_tiny_controlnet, build_tiny_motion_adapter
from daguerre.engine.families import family
from daguerre.engine.pipelines.video import animatediff_pipeline

HALF = torch.bfloat16  # the half precision a CPU runs


@pytest.fixture
def half_pipe(tiny_sd15: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_sd15, dtype=HALF, local_files_only=True)


def dtypes(pipe: DiffusionPipeline) -> set[torch.dtype]:
    return {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype}


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_img2img_and_controlnet_share_the_modules_without_casting(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model: Path = request.getfixturevalue(f"tiny_{name}")
    models = family(name)
    pipe = models.text_to_image.from_pretrained(model, dtype=HALF, local_files_only=True, **models.options)
    controlnet = ControlNetModel.from_pretrained(build_tiny_controlnet(model, tmp_path / "cn"), dtype=HALF)
    derived = {
        "image_to_image": models.derive(pipe, "image_to_image"),
        "controlnet": models.derive(pipe, "controlnet", controlnet=controlnet),
    }
    for task, built in derived.items():
        assert isinstance(built, models.tasks[task])
        assert built.unet is pipe.unet and built.vae is pipe.vae and built.text_encoder is pipe.text_encoder
        assert dtypes(pipe) == {HALF}


def test_animatediff_leaves_the_image_pipeline_in_its_dtype(half_pipe: StableDiffusionPipeline, tmp_path: Path) -> None:
    adapter = MotionAdapter.from_pretrained(build_tiny_motion_adapter(tmp_path / "motion"), dtype=HALF)
    animated = animatediff_pipeline(half_pipe, adapter)
    assert animated.vae is half_pipe.vae and animated.text_encoder is half_pipe.text_encoder
    assert dtypes(half_pipe) == {HALF} and animated.unet.dtype == HALF
