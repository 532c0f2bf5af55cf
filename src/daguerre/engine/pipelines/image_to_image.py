"""Image-to-image on a loaded text-to-image pipeline, sharing its components.

`strength` is the share of the denoising schedule that runs, as in diffusers and A1111: the base
image is noised to that point and denoised from there. The two ends are pinned down:

- When no denoising step would run (steps x strength < 1, strength 0 included), the base image
  comes back unchanged (as prepared: resized and flattened), without a VAE round trip.
- strength 1 ignores the base image and equals text-to-image with the same seed, byte for byte.
  (diffusers would still start from the image noised to the last timestep, which keeps a faint
  trace of it, sqrt(alpha_bar_T) ~ 0.07 for SD 1.5 and SDXL; "transform fully" should not depend on it.)

engine/pipelines/batching.py routes the two ends: `unchanged` jobs never reach a pipeline, and
strength 1 runs (and batches) as text-to-image.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from daguerre.engine.diffusers_classes import DiffusionPipeline
from daguerre.engine.families import of_pipeline
from daguerre.engine.jobs import ImageToImageJob, ReportProgress
from daguerre.engine.pipelines.sampling import sample_batch
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.engine.prompts.conditioning import Conditioning


def unchanged(job: ImageToImageJob) -> bool:
    """No denoising step would run: the base image is the answer."""
    return int(job.steps * job.strength) == 0


def decode_init_image(job: ImageToImageJob) -> Image.Image:
    image = Image.open(io.BytesIO(job.init_image))
    image.load()
    return image


def image_to_image(
    pipe: DiffusionPipeline,
    schedulers: Schedulers,
    jobs: Sequence[ImageToImageJob],
    conditionings: Sequence[Conditioning],
    init_images: Sequence[Image.Image],
    progress: ReportProgress | None = None,
) -> list[np.ndarray]:
    img2img = of_pipeline(pipe).derive(pipe, "image_to_image")
    return sample_batch(
        img2img,
        schedulers,
        jobs,
        conditionings,
        progress,
        per_image={"image": init_images},
        strength=jobs[0].strength,
    )
