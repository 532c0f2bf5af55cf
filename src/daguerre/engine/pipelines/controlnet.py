"""ControlNet generation on a loaded StableDiffusionPipeline, sharing its components.

As the contract says, `image_strength` has no effect: the image is generated from noise, guided by
the prompt and the control map (A1111's txt2img + ControlNet).
"""

from __future__ import annotations

from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from daguerre.engine.jobs import ControlNetJob
from daguerre.engine.pipelines.text_to_image import seed_generators
from daguerre.engine.prompt_encoding import encode_prompt_pair
from daguerre.engine.schedulers import Schedulers
from daguerre.imaging import encode_png


def controlnet_images(
    pipe: StableDiffusionPipeline,
    schedulers: Schedulers,
    job: ControlNetJob,
    controlnet: ControlNetModel,
    control_map: Image.Image,
) -> list[bytes]:
    guided = StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=controlnet)
    guided.set_progress_bar_config(disable=True)
    guided.scheduler = schedulers.get(job.scheduler)
    prompt_embeds, negative_embeds = encode_prompt_pair(
        job.prompt, job.negative_prompt, pipe.tokenizer, pipe.text_encoder, pipe.device
    )
    output = guided(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        image=control_map,
        width=job.width,
        height=job.height,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance_scale,
        num_images_per_prompt=len(job.seeds),
        generator=seed_generators(job.seeds),
    )
    return [encode_png(image) for image in output.images]
