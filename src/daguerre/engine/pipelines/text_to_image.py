"""Text-to-image on a loaded StableDiffusionPipeline."""

from __future__ import annotations

from daguerre.engine.diffusers_classes import StableDiffusionPipeline
from daguerre.engine.jobs import TextToImageJob
from daguerre.engine.pipelines.sampling import sample
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.imaging import encode_png


def text_to_image(pipe: StableDiffusionPipeline, schedulers: Schedulers, job: TextToImageJob) -> list[bytes]:
    return [encode_png(image) for image in sample(pipe, schedulers, job, width=job.width, height=job.height)]
