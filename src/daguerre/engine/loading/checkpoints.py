"""Load a catalog model version into a diffusers pipeline, from local files only."""

from __future__ import annotations

from pathlib import Path

import torch

from daguerre.engine.diffusers_classes import StableDiffusionPipeline
from daguerre.engine.jobs import ModelSpec
from daguerre.engine.loading.skeletons import family_skeleton


def load_text_to_image(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype, cache_dir: Path
) -> StableDiffusionPipeline:
    common = {"dtype": dtype, "local_files_only": True}
    if spec.format == "diffusers":
        pipe = StableDiffusionPipeline.from_pretrained(
            spec.path, safety_checker=None, requires_safety_checker=False, **common
        )
    elif spec.format == "single_file":
        config = spec.config_path or str(family_skeleton(spec.family, cache_dir))
        pipe = StableDiffusionPipeline.from_single_file(
            spec.path, config=config, safety_checker=None, feature_extractor=None, **common
        )
    else:
        raise ValueError(f"unknown model format {spec.format!r}")
    pipe.set_progress_bar_config(disable=True)
    # Memory format, attention and compilation are engine/runtime/execution.py's, per settings.
    return pipe.to(device)
