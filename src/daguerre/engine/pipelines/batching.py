"""Which jobs can share a forward pass, and rendering them together.

Jobs share a pass when everything the pass computes with is the same but the per-image inputs:
the model version, the LoRAs and their weights (fused into the weights), the task (text-to-image,
or image-to-image at one strength, which fixes the timesteps), the size, the steps, the scheduler
(with or without Karras sigmas) and the guidance scale. Prompts of any chunk count, negative
prompts, clip skips, seeds, `num_images` and init images may differ. ControlNet, hires fix,
upscale and video jobs run alone, as do image-to-image jobs that run no denoising step; strength 1
is text-to-image (see image_to_image.py) and batches with it.

Each image keeps its own generator, so it is the image its job renders alone, within the rounding
of batched arithmetic (README, "Seeds").
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from daguerre.engine.diffusers_classes import DiffusionPipeline
from daguerre.engine.jobs import ControlNetJob, ImageToImageJob, Job, ReportProgress, TextToImageJob
from daguerre.engine.pipelines.image_to_image import decode_init_image, image_to_image, unchanged
from daguerre.engine.pipelines.sampling import condition
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.engine.pipelines.text_to_image import text_to_image
from daguerre.engine.prompts.conditioning import Conditioning


@dataclass(frozen=True)
class Prepared:
    """A job made ready for the denoising pass: its prompts encoded, its upload decoded."""

    conditioning: Conditioning
    init_image: Image.Image | None = None


def _from_image(job: TextToImageJob) -> bool:
    return isinstance(job, ImageToImageJob) and job.strength < 1


def batch_key(job: Job) -> Hashable | None:
    """Jobs with equal keys can share a forward pass; None: the job runs alone."""
    if not isinstance(job, TextToImageJob) or isinstance(job, ControlNetJob):
        return None
    if isinstance(job, ImageToImageJob) and unchanged(job):
        return None
    task = ("image", job.strength) if isinstance(job, ImageToImageJob) and _from_image(job) else "text"
    return (task, job.model, job.loras, job.width, job.height, job.steps, job.guidance_scale, job.scheduler, job.karras)


def images_of(job: Job) -> int:
    """The images a job adds to a batch."""
    return len(job.seeds) if isinstance(job, TextToImageJob) else 1


def prepare(pipe: DiffusionPipeline, job: TextToImageJob) -> Prepared:
    """Encode the prompts (with the job's LoRAs active on the text encoder) and decode the upload."""
    return Prepared(condition(pipe, job), decode_upload(job))


def decode_upload(job: TextToImageJob) -> Image.Image | None:
    return decode_init_image(job) if isinstance(job, ImageToImageJob) and _from_image(job) else None


def render(
    pipe: DiffusionPipeline,
    schedulers: Schedulers,
    jobs: Sequence[TextToImageJob],
    prepared: Sequence[Prepared],
    progress: ReportProgress | None = None,
) -> list[np.ndarray]:
    """Denoise and decode jobs of one batch key together; one (images, H, W, 3) array per job."""
    conditionings = [item.conditioning for item in prepared]
    if not _from_image(jobs[0]):
        return text_to_image(pipe, schedulers, jobs, conditionings, progress)
    images: list[Image.Image] = []
    for item in prepared:
        assert item.init_image is not None  # an image-to-image job's upload, decoded by prepare()
        images.append(item.init_image)
    image_jobs = [job for job in jobs if isinstance(job, ImageToImageJob)]
    return image_to_image(pipe, schedulers, image_jobs, conditionings, images, progress)
