"""Image-to-image on a loaded StableDiffusionPipeline, sharing its components.

`strength` is the share of the denoising schedule that runs, as in diffusers and A1111: the base
image is noised to that point and denoised from there. The two ends are pinned down:

- When no denoising step would run (steps x strength < 1, strength 0 included), the base image
  comes back unchanged (as prepared: resized and flattened), without a VAE round trip.
- strength 1 ignores the base image and equals text-to-image with the same seed, byte for byte.
  (diffusers would still start from the image noised to the last timestep, which keeps a faint
  trace of it, sqrt(alpha_bar_T) ~ 0.07 for SD 1.5; "transform fully" should not depend on it.)
"""

from __future__ import annotations

import io

from PIL import Image

from daguerre.engine.diffusers_classes import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from daguerre.engine.jobs import ImageToImageJob, ReportProgress
from daguerre.engine.pipelines.sampling import derive, sample
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.engine.pipelines.text_to_image import text_to_image
from daguerre.imaging import encode_png


def image_to_image(
    pipe: StableDiffusionPipeline,
    schedulers: Schedulers,
    job: ImageToImageJob,
    progress: ReportProgress | None = None,
) -> list[bytes]:
    if int(job.steps * job.strength) == 0:
        return [job.init_image] * len(job.seeds)
    if job.strength >= 1:
        return text_to_image(pipe, schedulers, job, progress)
    img2img = derive(pipe, StableDiffusionImg2ImgPipeline)
    init_image = Image.open(io.BytesIO(job.init_image))
    images = sample(img2img, schedulers, job, progress, image=init_image, strength=job.strength)
    return [encode_png(image) for image in images]
