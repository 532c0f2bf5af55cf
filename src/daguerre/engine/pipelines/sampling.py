"""What every SD task pipeline shares: building on the loaded components, and sampling with the
job's scheduler, weighted prompts and seeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from daguerre.engine.diffusers_classes import (
    DiffusionPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from daguerre.engine.jobs import ReportProgress, TextToImageJob
from daguerre.engine.pipelines.outputs import to_pil
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.engine.prompts.encoding import encode_prompt_pair

P = TypeVar("P", StableDiffusionImg2ImgPipeline, StableDiffusionControlNetPipeline)
Task = StableDiffusionPipeline | StableDiffusionImg2ImgPipeline | StableDiffusionControlNetPipeline


def seed_generators(seeds: tuple[int, ...]) -> list[torch.Generator]:
    # CPU generators: the same seed gives the same starting noise on any GPU or CPU, and image i
    # draws only from its own generator, so it can be reproduced alone with seed + i.
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def derive(pipe: StableDiffusionPipeline, cls: type[P], **extra: Any) -> P:
    """A task pipeline (img2img, ControlNet) on the loaded pipeline's own modules: nothing is
    reloaded or copied. Not `from_pipe`: it casts every shared module to float32 unless given a
    dtype, which on a half-precision GPU would convert the cached text-to-image pipeline too."""
    derived = cls(**pipe.components, **extra, requires_safety_checker=False)
    derived.set_progress_bar_config(disable=True)
    return derived


StepEnd = Callable[[DiffusionPipeline, int, Any, dict[str, Any]], dict[str, Any]]


def step_callback(progress: ReportProgress | None) -> StepEnd | None:
    """diffusers' `callback_on_step_end`, reporting each finished step out of the steps the
    pipeline runs (img2img runs fewer than `steps`). `progress` may raise to stop the job: the
    exception leaves the pipeline call at once, before the next step and before decoding."""
    if progress is None:
        return None

    def on_step_end(pipe: DiffusionPipeline, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        progress(step + 1, int(pipe.num_timesteps))
        return tensors

    return on_step_end


def sample(
    task: Task,
    schedulers: Schedulers,
    job: TextToImageJob,
    progress: ReportProgress | None = None,
    **inputs: Any,
) -> list[Image.Image]:
    """Run `task` with the job's scheduler, A1111-weighted prompts, guidance, steps and one
    generator per image; `inputs` are the task's own (size, init image, strength, control map);
    `progress` hears of each step."""
    task.scheduler = schedulers.get(job.scheduler)
    prompt_embeds, negative_embeds = encode_prompt_pair(
        job.prompt, job.negative_prompt, task.tokenizer, task.text_encoder, task.device
    )
    # diffusers' pipeline calls are untyped; with output_type="np" they give an (N, H, W, 3) array.
    images: np.ndarray = task(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance_scale,
        num_images_per_prompt=len(job.seeds),
        generator=seed_generators(job.seeds),
        output_type="np",
        callback_on_step_end=step_callback(progress),
        **inputs,
    ).images
    return to_pil(images, "denoising and decoding the image")
