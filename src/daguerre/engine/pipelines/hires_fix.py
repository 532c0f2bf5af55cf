"""Hires fix, as A1111 does it: upscale an image, then re-render it with image-to-image at the
larger size with its original model, prompts, scheduler and seed, so detail is drawn at the new
resolution instead of interpolated.
"""

from __future__ import annotations

import io

from PIL import Image

from daguerre.engine.diffusers_classes import DiffusionPipeline
from daguerre.engine.families import of_pipeline
from daguerre.engine.jobs import HiresFixJob, ReportProgress
from daguerre.engine.pipelines.sampling import sample
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.engine.pipelines.upscaling import Upscaler, upscale_image
from daguerre.imaging import encode_png


def hires_fix(
    pipe: DiffusionPipeline,
    schedulers: Schedulers,
    upscaler: Upscaler | None,
    job: HiresFixJob,
    progress: ReportProgress | None = None,
) -> bytes:
    """`progress` hears of the upscaler's tiles, then of the re-render's steps."""
    render = job.render
    source = Image.open(io.BytesIO(job.image)).convert("RGB")
    upscaled = upscale_image(upscaler, source, render.width, render.height, job.tiling, progress)
    if job.denoising_steps == 0:
        return encode_png(upscaled)  # nothing to re-render; diffusers would fail on zero steps
    img2img = of_pipeline(pipe).derive(pipe, "image_to_image")
    (image,) = sample(img2img, schedulers, render, progress, image=upscaled, strength=job.strength)
    return encode_png(image)
