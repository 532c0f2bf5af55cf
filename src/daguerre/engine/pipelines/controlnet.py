"""ControlNet generation on a loaded text-to-image pipeline, sharing its components; the
ControlNet must be of the model's family (the services match them).

As the contract says, `image_strength` has no effect: the image is generated from noise, guided by
the prompt and the control map (A1111's txt2img + ControlNet).
"""

from __future__ import annotations

from PIL import Image

from daguerre.engine.diffusers_classes import ControlNetModel, DiffusionPipeline
from daguerre.engine.families import of_pipeline
from daguerre.engine.jobs import ControlNetJob, ReportProgress
from daguerre.engine.pipelines.sampling import sample
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.imaging import encode_png


def controlnet_images(
    pipe: DiffusionPipeline,
    schedulers: Schedulers,
    job: ControlNetJob,
    controlnet: ControlNetModel,
    control_map: Image.Image,
    progress: ReportProgress | None = None,
) -> list[bytes]:
    guided = of_pipeline(pipe).derive(pipe, "controlnet", controlnet=controlnet)
    images = sample(guided, schedulers, job, progress, image=control_map, width=job.width, height=job.height)
    return [encode_png(image) for image in images]
