"""Test-only helpers for single-file checkpoints: export a diffusers SD 1.x folder in the
A1111/Civitai layout, and copy a folder's config skeleton, so the tests load files the way users'
Civitai downloads load."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import save_file

from tests.support import ldm_layout

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def export_single_file(pipeline_folder: Path, checkpoint: Path) -> Path:
    """Save a diffusers SD 1.x folder as one A1111/Civitai-layout .safetensors checkpoint."""
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_folder, local_files_only=True)
    state = ldm_layout.to_ldm_state_dict(pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict())
    save_file({k: v.contiguous() for k, v in state.items()}, str(checkpoint))
    return checkpoint


def export_sdxl_single_file(pipeline_folder: Path, checkpoint: Path) -> Path:
    """Save a diffusers SDXL folder as one SGM-layout checkpoint, as SDXL, Pony and Illustrious
    files are published: .safetensors, or a .ckpt pickle of {"state_dict": ...}."""
    pipe = StableDiffusionXLPipeline.from_pretrained(pipeline_folder, local_files_only=True)
    state = ldm_layout.to_sgm_state_dict(
        pipe.unet.state_dict(), pipe.vae.state_dict(), pipe.text_encoder.state_dict(), pipe.text_encoder_2.state_dict()
    )
    state = {k: v.contiguous() for k, v in state.items()}
    if checkpoint.suffix == ".safetensors":
        save_file(state, str(checkpoint))
    else:
        torch.save({"state_dict": state}, checkpoint)
    return checkpoint


def skeleton_of(pipeline_folder: Path, target: Path) -> Path:
    """Copy a diffusers folder without its weights: the skeleton of a custom architecture."""

    def ignore(_dir: str, names: list[str]) -> list[str]:
        return [n for n in names if n.endswith(_WEIGHT_SUFFIXES)]

    shutil.copytree(pipeline_folder, target, ignore=ignore, dirs_exist_ok=True)
    return target
