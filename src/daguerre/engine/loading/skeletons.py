"""Config skeletons for loading single-file (A1111/Civitai) checkpoints fully offline.

`from_single_file` otherwise fetches the model configs from a hub. Given `config=<folder>` holding
model_index.json, the scheduler config, the tokenizer and each model's config.json (no weights), it
builds the pipeline from local files alone.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from daguerre.engine.loading.clip_tokenizer import write_clip_tokenizer

FAMILIES = ("sd15",)


def family_skeleton(family: str, cache_dir: Path) -> Path:
    """The shipped skeleton of a model family, completed with the derived tokenizer."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    target = cache_dir / "skeletons" / family
    if (target / "tokenizer" / "vocab.json").exists():
        return target
    shipped = resources.files("daguerre.engine.loading").joinpath("configs", family)
    with resources.as_file(shipped) as source:
        shutil.copytree(source, target, dirs_exist_ok=True)
    write_clip_tokenizer(target / "tokenizer")
    return target
