"""Text-to-image on a loaded StableDiffusionPipeline."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from daguerre.engine.jobs import TextToImageJob
from daguerre.engine.prompt_encoding import encode_prompt_pair
from daguerre.engine.schedulers import Schedulers
from daguerre.imaging import encode_png


def seed_generators(seeds: tuple[int, ...]) -> list[torch.Generator]:
    # CPU generators: the same seed gives the same starting noise on any GPU or CPU, and image i
    # draws only from its own generator, so it can be reproduced alone with seed + i.
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def text_to_image(pipe: StableDiffusionPipeline, schedulers: Schedulers, job: TextToImageJob) -> list[bytes]:
    pipe.scheduler = schedulers.get(job.scheduler)
    prompt_embeds, negative_embeds = encode_prompt_pair(
        job.prompt, job.negative_prompt, pipe.tokenizer, pipe.text_encoder, pipe.device
    )
    output = pipe(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        width=job.width,
        height=job.height,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance_scale,
        num_images_per_prompt=len(job.seeds),
        generator=seed_generators(job.seeds),
    )
    return [encode_png(image) for image in output.images]
