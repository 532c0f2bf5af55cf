"""Every execution setting (engine/runtime/execution.py) changes speed, not images: with it on, the
engine's images equal those with it off within the rounding the README documents (at most
`LEVELS` intensity levels in any pixel), LoRAs included."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daguerre.engine.jobs import LoraSpec, ModelSpec, TextToImageJob
from daguerre.engine.options import ExecutionOptions
from daguerre.engine.runtime.execution import prepare
from daguerre.engine.runtime.local import LocalEngine
from daguerre.settings import ExecutionSettings

LEVELS = 2  # the README's "Throughput" documents this bound


def pixels(result: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result)).convert("RGB"), dtype=np.int16)


def assert_close(images: tuple[bytes, ...], reference: tuple[bytes, ...]) -> None:
    assert len(images) == len(reference)
    for image, expected in zip(images, reference, strict=True):
        assert int(np.abs(pixels(image) - pixels(expected)).max()) <= LEVELS


def render(engine: LocalEngine, model: ModelSpec, loras: tuple[LoraSpec, ...] = ()) -> tuple[bytes, ...]:
    job = TextToImageJob(model, "a lighthouse", "blurry", 64, 64, 3, 7.0, "DPMSolverMultistep", (11, 12), loras)
    result = engine.run(job)
    return result.images  # type: ignore[attr-defined,no-any-return]  # text-to-image gives ImagesResult


@pytest.fixture(scope="module")
def model(tiny_sd15: Path) -> ModelSpec:
    return ModelSpec("tiny", "1", str(tiny_sd15), "diffusers", "sd15")


@pytest.fixture(scope="module")
def reference(model: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, ...]:
    return render(LocalEngine(cache_dir=tmp_path_factory.mktemp("cache"), device="cpu"), model)


@pytest.mark.parametrize(
    "options",
    [
        ExecutionOptions(channels_last=True),
        ExecutionOptions(attention="classic"),
        ExecutionOptions(fuse_qkv=True),
        ExecutionOptions(channels_last=True, fuse_qkv=True),
    ],
    ids=["channels_last", "classic_attention", "fuse_qkv", "channels_last+fuse_qkv"],
)
def test_each_setting_gives_the_same_images(
    options: ExecutionOptions, model: ModelSpec, reference: tuple[bytes, ...], tmp_path: Path
) -> None:
    engine = LocalEngine(cache_dir=tmp_path, device="cpu", execution=options)
    assert_close(render(engine, model), reference)
    unet = engine.pipeline(model).pipe.unet
    if options.fuse_qkv:
        assert all(getattr(m, "fused_projections", True) for m in unet.modules() if hasattr(m, "to_q"))
    if options.channels_last:
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_loras_apply_through_fused_projections(model: ModelSpec, lora_files: dict[str, Path], tmp_path: Path) -> None:
    """diffusers does not unfuse QKV when a LoRA loads, so a fused attention would ignore a LoRA on
    to_q/to_k/to_v; the engine copies the LoRA-fused weights into the fused layers."""
    plain = LocalEngine(cache_dir=tmp_path / "plain", device="cpu")
    fused = LocalEngine(cache_dir=tmp_path / "fused", device="cpu", execution=ExecutionOptions(fuse_qkv=True))
    one = (LoraSpec("a", "1", str(lora_files["a"]), 0.9),)
    two = (LoraSpec("b", "1", str(lora_files["b"]), 0.7),)
    base = render(plain, model)
    for loras in (one, two, (), one):  # switching, and back to none
        expected = render(plain, model, loras)
        assert_close(render(fused, model, loras), expected)
        if loras:
            assert expected != base  # the LoRA changes the image, so the comparison means something
    assert_close(render(fused, model), base)


def test_fuse_qkv_needs_sdpa() -> None:
    with pytest.raises(ValueError, match="fuse_qkv needs"):
        ExecutionSettings(fuse_qkv=True, attention="classic")


def micro_pipeline(folder: Path) -> object:
    """The smallest SD 1.5-class pipeline: two UNet levels (one attending), a two-level VAE, a
    one-layer text encoder; so inductor has the fewest kernels to generate and build."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from daguerre.engine.diffusers_classes import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from daguerre.engine.loading.clip_tokenizer import write_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        mid_block_add_attention=False,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=8,
        )
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer")),
        scheduler=DPMSolverMultistepScheduler(),
        safety_checker=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.skipif(
    not os.environ.get("DAGUERRE_TEST_COMPILE"),
    reason="torch.compile's inductor needs about 4 minutes to generate and build even the micro model's kernels on "
    "a 2-core CPU, too long for the suite; run with DAGUERRE_TEST_COMPILE=1",
)
def test_compiled_pipeline_gives_the_same_images(tmp_path: Path) -> None:
    pipe = micro_pipeline(tmp_path)

    def run() -> np.ndarray:
        generator = torch.Generator().manual_seed(5)
        images: np.ndarray = pipe(  # type: ignore[operator]
            "a cat", width=64, height=64, num_inference_steps=2, generator=generator, output_type="np"
        ).images
        return np.round(images * 255).astype(np.int16)

    eager = run()
    cache = tmp_path / "inductor"
    prepare(pipe, ExecutionOptions(compile=True, compile_cache_dir=cache), torch.device("cpu"))  # type: ignore[arg-type]
    compiled = run()
    assert int(np.abs(compiled - eager).max()) <= LEVELS
    assert any(cache.iterdir())  # the generated kernels are on disk for the next start
