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
