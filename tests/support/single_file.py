"""Test-only helpers for single-file checkpoints: export a diffusers SD 1.x folder in the
A1111/Civitai layout, and copy a folder's config skeleton, so the tests load files the way users'
Civitai downloads load."""

from __future__ import annotations

import shutil
from pathlib import Path

from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from tests.support import ldm_layout

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def export_single_file(pipeline_folder: Path, checkpoint: Path) -> Path:
    """Save a diffusers SD 1.x folder as one A1111/Civitai-layout .safetensors checkpoint."""
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_folder, local_files_only=True)
    state = ldm_layout.to_ldm_state_dict(pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict())
    save_file({k: v.contiguous() for k, v in state.items()}, str(checkpoint))
    return checkpoint


def skeleton_of(pipeline_folder: Path, target: Path) -> Path:
    """Copy a diffusers folder without its weights: the skeleton of a custom architecture."""

    def ignore(_dir: str, names: list[str]) -> list[str]:
        return [n for n in names if n.endswith(_WEIGHT_SUFFIXES)]

    shutil.copytree(pipeline_folder, target, ignore=ignore, dirs_exist_ok=True)
    return target
