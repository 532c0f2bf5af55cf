"""Tiny random-weight models of the real architectures, for the demo and the tests.

They keep the real SD 1.5 topology and key layout (four UNet levels, a four-level VAE with scale
factor 8, a CLIP text encoder with the real 49408-token vocabulary) at widths small enough to run
on a CPU in a fraction of a second, the way diffusers' own test suite builds its dummy components.
Their outputs are noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from daguerre.engine import ldm_layout
from daguerre.engine.clip_tokenizer import write_clip_tokenizer


def build_tiny_sd15(folder: Path, seed: int = 0) -> Path:
    """Write a diffusers folder of a tiny random SD 1.5-topology pipeline; same seed, same bytes."""
    torch.manual_seed(seed)
    # Widths in SD 1.5's 1:2:4:4 ratio (320, 640, 1280, 1280) so every layer of the real model,
    # shortcut convolutions included, exists here under the same name.
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=2,
        norm_num_groups=8,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),  # SD's VAE: (128, 256, 512, 512)
        layers_per_block=2,
        norm_num_groups=8,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    )
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer"))
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def export_single_file(pipeline_folder: Path, checkpoint: Path) -> Path:
    """Save a diffusers SD 1.x folder as one A1111/Civitai-layout .safetensors checkpoint."""
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_folder, local_files_only=True)
    state = ldm_layout.to_ldm_state_dict(
        pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict()
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(checkpoint))
    return checkpoint


def build_tiny_rrdbnet(path: Path, scale: int, seed: int = 0, num_feat: int = 16, num_block: int = 1) -> Path:
    """Write a tiny random RRDBNet (ESRGAN / Real-ESRGAN) in BasicSR's key layout, as Real-ESRGAN's
    releases ship it: `{"params_ema": ...}` in a .pth, or the bare state dict in a .safetensors.

    As in BasicSR, x2 folds the input with a 2x pixel-unshuffle (12 input channels) and then
    upsamples 4x like x4 does. Growth channels stay at 32, which spandrel assumes. Weights are scaled
    so the output varies with the input around mid-grey instead of saturating.
    """
    if scale not in (2, 4):
        raise ValueError(f"scale must be 2 or 4, not {scale}")
    generator = torch.Generator().manual_seed(seed)
    growth = 32
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out_channels: int, in_channels: int, gain: float = 1.0, bias: float = 0.0) -> None:
        std = gain * (2.0 / (in_channels * 9)) ** 0.5  # He initialisation, scaled
        state[f"{name}.weight"] = torch.randn(out_channels, in_channels, 3, 3, generator=generator) * std
        state[f"{name}.bias"] = torch.full((out_channels,), bias)

    conv("conv_first", num_feat, 3 * (4 if scale == 2 else 1))
    for block in range(num_block):
        for rdb in (1, 2, 3):
            for index in range(1, 6):
                # BasicSR scales the dense blocks' initial weights by 0.1 as well.
                out_channels = num_feat if index == 5 else growth
                conv(f"body.{block}.rdb{rdb}.conv{index}", out_channels, num_feat + (index - 1) * growth, 0.1)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, num_feat, num_feat)
    conv("conv_last", 3, num_feat, 0.1, 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"params_ema": state}, path)
    return path
