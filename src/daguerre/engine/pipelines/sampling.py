"""What every task pipeline of every family shares: sampling with the job's scheduler, weighted
prompts and seeds, for one job or a batch of jobs that share a forward pass
(engine/pipelines/batching.py says which can). The family (engine/families) encodes the prompts
and names the pipeline classes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from daguerre.engine.diffusers_classes import DiffusionPipeline
from daguerre.engine.families import of_pipeline
from daguerre.engine.jobs import ReportProgress, TextToImageJob
from daguerre.engine.pipelines.outputs import to_pil
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.engine.prompts.conditioning import Conditioning, stack_pooled


def seed_generators(seeds: tuple[int, ...]) -> list[torch.Generator]:
    # CPU generators: the same seed gives the same starting noise on any GPU or CPU, and image i
    # draws only from its own generator, so it can be reproduced alone with seed + i.
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


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


def condition(pipe: DiffusionPipeline, job: TextToImageJob) -> Conditioning:
    return of_pipeline(pipe).condition(pipe, job.prompt, job.negative_prompt, job.clip_skip)


def _stack(
    conditionings: Sequence[Conditioning], counts: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One row per image (image i of a job gets its job's row), and the cross-attention mask when
    the jobs' prompts have different chunk counts. Shorter prompts are padded with zeros that the
    mask hides, so each image attends to exactly its own tokens, as it does alone (A1111 pads with
    encoded empty chunks instead, which changes an image with its batch-mates' prompt lengths)."""
    longest = max(c.positive.shape[1] for c in conditionings)
    positives, negatives, masks = [], [], []
    for conditioning, count in zip(conditionings, counts, strict=True):
        length = conditioning.positive.shape[1]
        padding = (0, 0, 0, longest - length)
        positives.append(torch.nn.functional.pad(conditioning.positive, padding).expand(count, -1, -1))
        negatives.append(torch.nn.functional.pad(conditioning.negative, padding).expand(count, -1, -1))
        mask = torch.zeros(count, longest, device=conditioning.positive.device)
        mask[:, :length] = 1
        masks.append(mask)
    uniform = all(c.positive.shape[1] == longest for c in conditionings)
    return torch.cat(positives), torch.cat(negatives), None if uniform else torch.cat(masks)


@contextmanager
def _cross_attention_mask(unet: torch.nn.Module, mask: torch.Tensor | None) -> Iterator[None]:
    """Give every UNet call of the pipeline `mask` as its `encoder_attention_mask` (diffusers'
    SD pipelines have no argument for it). With guidance, the UNet sees the negative and the
    positive rows stacked: the mask is repeated to match."""
    if mask is None:
        yield
        return

    def add_mask(_module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        rows = kwargs["encoder_hidden_states"].shape[0]
        kwargs["encoder_attention_mask"] = mask.repeat(rows // mask.shape[0], 1)
        return args, kwargs

    hook = unet.register_forward_pre_hook(add_mask, with_kwargs=True)
    try:
        yield
    finally:
        hook.remove()


def sample_batch(
    task: DiffusionPipeline,
    schedulers: Schedulers,
    jobs: Sequence[TextToImageJob],
    conditionings: Sequence[Conditioning],
    progress: ReportProgress | None = None,
    per_image: dict[str, Sequence[Any]] | None = None,
    **inputs: Any,
) -> list[np.ndarray]:
    """Run `task` once for every image of `jobs`, which share the scheduler, steps and guidance
    of the first; each image has its own generator (its seed) and its job's prompts. `per_image`
    are inputs given per job (an init image), repeated for each of its images; `inputs` are shared
    (size, strength, control map). One (images, H, W, 3) float array per job, unchecked."""
    first = jobs[0]
    counts = [len(job.seeds) for job in jobs]
    positive, negative, mask = _stack(conditionings, counts)
    pooled = stack_pooled(list(conditionings), counts)
    expanded = {
        name: [value for value, count in zip(values, counts, strict=True) for _ in range(count)]
        for name, values in (per_image or {}).items()
    }
    task.scheduler = schedulers.get(first.scheduler, first.karras)
    with _cross_attention_mask(task.unet, mask):
        # diffusers' pipeline calls are untyped; with output_type="np" they give an (N, H, W, 3) array.
        images: np.ndarray = cast(Callable[..., Any], task)(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            num_images_per_prompt=1,
            generator=[generator for job in jobs for generator in seed_generators(job.seeds)],
            output_type="np",
            callback_on_step_end=step_callback(progress),
            **pooled,
            **expanded,
            **inputs,
        ).images
    return list(np.split(images, np.cumsum(counts)[:-1]))


def sample(
    task: DiffusionPipeline,
    schedulers: Schedulers,
    job: TextToImageJob,
    progress: ReportProgress | None = None,
    **inputs: Any,
) -> list[Image.Image]:
    """Run `task` for one job; `inputs` are the task's own (size, init image, strength, control
    map); `progress` hears of each step."""
    (images,) = sample_batch(task, schedulers, [job], [condition(task, job)], progress, **inputs)
    return to_pil(images, "denoising and decoding the image")
