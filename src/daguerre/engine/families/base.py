"""The engine side of a model family: how its checkpoints load, how prompts become conditioning,
and which diffusers pipeline runs each task on the loaded components."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from daguerre.engine.diffusers_classes import AutoencoderKL, DiffusionPipeline
from daguerre.engine.families.traits import FamilyTraits
from daguerre.engine.jobs import ModelSpec, VaeSpec
from daguerre.engine.loading.clip_tokenizer import write_clip_tokenizer
from daguerre.engine.prompts.conditioning import Conditioning

Task = Literal["image_to_image", "controlnet"]


class ImageFamily(ABC):
    traits: FamilyTraits
    text_to_image: type[DiffusionPipeline]
    tasks: ClassVar[dict[Task, type[DiffusionPipeline]]]
    # Constructor options every pipeline of the family is built with, and those only loading takes.
    options: ClassVar[dict[str, Any]]
    load_options: ClassVar[dict[str, Any]] = {}
    # Tokenizer folders of the skeleton, each with its padding token (the CLIP files are derived
    # offline; see loading/clip_tokenizer.py).
    tokenizers: ClassVar[dict[str, str]]
    # The pipeline components a LoRA may target.
    lora_components: tuple[str, ...]

    def skeleton(self, cache_dir: Path) -> Path:
        """The shipped config skeleton, completed with the derived tokenizers: what
        `from_single_file(config=...)` needs to build the pipeline from local files alone."""
        target = cache_dir / "skeletons" / self.traits.name
        if all((target / folder / "vocab.json").exists() for folder in self.tokenizers):
            return target
        shipped = resources.files(f"daguerre.engine.families.{self.traits.name}").joinpath("skeleton")
        with resources.as_file(shipped) as source:
            shutil.copytree(source, target, dirs_exist_ok=True)
        for folder, pad_token in self.tokenizers.items():
            write_clip_tokenizer(target / folder, pad_token)
        return target

    def load(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, cache_dir: Path) -> DiffusionPipeline:
        common: dict[str, Any] = {"dtype": dtype, "local_files_only": True, **self.options, **self.load_options}
        cls = self.text_to_image
        if spec.format == "diffusers":
            config = spec.path
            pipe = cls.from_pretrained(spec.path, **common)
        elif spec.format == "single_file":
            config = spec.config_path or str(self.skeleton(cache_dir))
            # from_single_file comes from a loader mixin every family's text-to-image class has.
            pipe = cls.from_single_file(spec.path, config=config, **common)  # type: ignore[attr-defined]
        else:
            raise ValueError(f"unknown model format {spec.format!r}")
        if spec.vae is not None:
            # A VAE file takes the checkpoint's own VAE config (its scaling factor among them).
            pipe.register_modules(vae=self.load_vae(spec.vae, dtype, config))
        pipe.set_progress_bar_config(disable=True)
        # Memory format, attention and compilation are engine/runtime/execution.py's, per settings.
        return pipe.to(device)

    @staticmethod
    def load_vae(spec: VaeSpec, dtype: torch.dtype, config: str) -> AutoencoderKL:
        """A VAE folder as it is; an A1111 VAE file (`encoder.`/`decoder.` keys, with or without
        `first_stage_model.`) with the VAE config of `config` (a pipeline folder or skeleton)."""
        if spec.format == "diffusers":
            vae: AutoencoderKL = AutoencoderKL.from_pretrained(spec.path, dtype=dtype, local_files_only=True)
        else:
            vae = AutoencoderKL.from_single_file(
                spec.path, config=config, subfolder="vae", dtype=dtype, local_files_only=True
            )
        return vae

    def owns(self, pipe: DiffusionPipeline) -> bool:
        return isinstance(pipe, (self.text_to_image, *self.tasks.values()))

    def derive(self, pipe: DiffusionPipeline, task: Task, **extra: Any) -> DiffusionPipeline:
        """A task pipeline on the loaded pipeline's own modules: nothing is reloaded or copied.
        Not `from_pipe`: it casts every shared module to float32 unless given a dtype, which on a
        half-precision GPU would convert the cached text-to-image pipeline too."""
        derived = self.tasks[task](**pipe.components, **extra, **self.options)
        derived.set_progress_bar_config(disable=True)
        return derived

    @abstractmethod
    def condition(self, pipe: DiffusionPipeline, prompt: str, negative_prompt: str, clip_skip: int = 1) -> Conditioning:
        """Encode a prompt pair, A1111 weighting and long prompts included; `clip_skip` as A1111
        means it (2: the text encoder's penultimate layer)."""
