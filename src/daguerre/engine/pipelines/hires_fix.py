"""Hires fix, as A1111 does it: upscale an image, then re-render it with image-to-image at the
larger size with its original model, prompts, scheduler and seed, so detail is drawn at the new
resolution instead of interpolated.
"""

from __future__ import annotations

import io

from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image
from spandrel import ImageModelDescriptor

from daguerre.engine.jobs import HiresFixJob
from daguerre.engine.pipelines.text_to_image import seed_generators
from daguerre.engine.prompt_encoding import encode_prompt_pair
from daguerre.engine.schedulers import Schedulers
from daguerre.engine.upscaling import upscale_image
from daguerre.imaging import encode_png


def hires_fix(
    pipe: StableDiffusionPipeline,
    schedulers: Schedulers,
    upscaler: ImageModelDescriptor | None,
    job: HiresFixJob,
) -> bytes:
    render = job.render
    source = Image.open(io.BytesIO(job.image)).convert("RGB")
    upscaled = upscale_image(upscaler, source, render.width, render.height, job.tiling)
    if job.denoising_steps == 0:
        return encode_png(upscaled)  # nothing to re-render; diffusers would fail on zero steps
    # Built on the loaded components: no reload, no extra weights. (from_pipe would do the same but
    # also casts the shared components, to float32 unless told otherwise, and logs it each time.)
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    img2img.scheduler = schedulers.get(render.scheduler)
    prompt_embeds, negative_embeds = encode_prompt_pair(
        render.prompt, render.negative_prompt, pipe.tokenizer, pipe.text_encoder, pipe.device
    )
    output = img2img(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        image=upscaled,
        strength=job.strength,
        num_inference_steps=render.steps,
        guidance_scale=render.guidance_scale,
        generator=seed_generators(render.seeds),
    )
    return encode_png(output.images[0])
