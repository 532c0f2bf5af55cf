"""Task pipelines (img2img, ControlNet, AnimateDiff) are built on the resident text-to-image
pipeline's own modules and must leave them as they are: same objects, same dtype. (diffusers'
from_pipe casts shared modules to float32 unless told their dtype, which on a half-precision GPU
would silently convert the cached pipeline.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    ControlNetModel,
    MotionAdapter,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)

from daguerre.demo.tiny_models import build_tiny_controlnet, build_tiny_motion_adapter
from daguerre.engine.pipelines.sampling import derive
from daguerre.engine.pipelines.video import animatediff_pipeline

HALF = torch.bfloat16  # the half precision a CPU runs


@pytest.fixture
def half_pipe(tiny_sd15: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_sd15, dtype=HALF, local_files_only=True)


def dtypes(pipe: StableDiffusionPipeline) -> set[torch.dtype]:
    return {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype}


def test_img2img_and_controlnet_share_the_modules_without_casting(
    half_pipe: StableDiffusionPipeline, tiny_sd15: Path, tmp_path: Path
) -> None:
    controlnet = ControlNetModel.from_pretrained(build_tiny_controlnet(tiny_sd15, tmp_path / "cn"), dtype=HALF)
    for derived in (
        derive(half_pipe, StableDiffusionImg2ImgPipeline),
        derive(half_pipe, StableDiffusionControlNetPipeline, controlnet=controlnet),
    ):
        assert derived.unet is half_pipe.unet and derived.vae is half_pipe.vae
        assert dtypes(half_pipe) == {HALF}


def test_animatediff_leaves_the_image_pipeline_in_its_dtype(half_pipe: StableDiffusionPipeline, tmp_path: Path) -> None:
    adapter = MotionAdapter.from_pretrained(build_tiny_motion_adapter(tmp_path / "motion"), dtype=HALF)
    animated = animatediff_pipeline(half_pipe, adapter)
    assert animated.vae is half_pipe.vae and animated.text_encoder is half_pipe.text_encoder
    assert dtypes(half_pipe) == {HALF} and animated.unet.dtype == HALF
