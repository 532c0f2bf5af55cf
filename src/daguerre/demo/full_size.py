"""A full-size SD 1.5 pipeline with seeded random weights, for benchmarks (bench/gpu.py,
bench/lora_switch.py --full): the real UNet, VAE and CLIP text encoder sizes, from the config
skeleton the package ships for offline single-file loading, so nothing is downloaded. Its images
are noise; its cost per step, memory and load times are those of SD 1.5.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from daguerre.engine.diffusers_classes import (
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from daguerre.engine.families import family


def build_full_sd15(folder: Path, seed: int, cache_dir: Path) -> Path:
    """A full-size SD 1.5 diffusers folder with seeded random weights, from the config skeleton
    the package ships (the same configs the offline single-file loader uses), saved in fp16."""
    skeleton = family("sd15").skeleton(cache_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(skeleton / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(skeleton / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(skeleton / "text_encoder"))
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(skeleton / "tokenizer"),
        scheduler=PNDMScheduler.from_pretrained(skeleton / "scheduler"),
        safety_checker=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    return folder
