"""Text-to-image on a loaded StableDiffusionPipeline."""

from __future__ import annotations

from daguerre.engine.diffusers_classes import StableDiffusionPipeline
from daguerre.engine.jobs import ReportProgress, TextToImageJob
from daguerre.engine.pipelines.sampling import sample
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.imaging import encode_png


def text_to_image(
    pipe: StableDiffusionPipeline,
    schedulers: Schedulers,
    job: TextToImageJob,
    progress: ReportProgress | None = None,
) -> list[bytes]:
    images = sample(pipe, schedulers, job, progress, width=job.width, height=job.height)
    return [encode_png(image) for image in images]
