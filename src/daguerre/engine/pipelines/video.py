"""Video on diffusers: Wan 2.1 (text- and image-to-video) and AnimateDiff on an SD 1.5 checkpoint.

Frames come back as a uint8 array (frames, height, width, 3) for the MP4 writer.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionModel

from daguerre.engine.diffusers_classes import (
    AnimateDiffPipeline,
    AutoencoderKLWan,
    DDIMScheduler,
    DiffusionPipeline,
    MotionAdapter,
    WanImageToVideoPipeline,
    WanPipeline,
)
from daguerre.engine.jobs import ModelSpec, ReportProgress, VideoJob
from daguerre.engine.pipelines.outputs import check_finite
from daguerre.engine.pipelines.sampling import seed_generators, step_callback
from daguerre.engine.prompts.encoding import encode_prompt_pair
from daguerre.engine.runtime.failures import require


def load_wan(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype, cpu_offload: bool, vae_tiling: bool
) -> WanPipeline | WanImageToVideoPipeline:
    # Wan was trained in bfloat16 and overflows in float16; its VAE and CLIP image encoder are
    # published to run in float32 (their outputs drift visibly in half precision).
    # diffusers' Wan pipelines clean prompts with ftfy, and fail with a NameError without it.
    require("ftfy", f"loading video model {spec.id} (version {spec.version})")
    model_dtype = torch.bfloat16 if dtype == torch.float16 else dtype
    extra: dict[str, torch.nn.Module] = {
        "vae": AutoencoderKLWan.from_pretrained(spec.path, subfolder="vae", dtype=torch.float32, local_files_only=True)
    }
    index = json.loads((Path(spec.path) / "model_index.json").read_text())
    if (index.get("image_encoder") or [None])[0]:
        extra["image_encoder"] = CLIPVisionModel.from_pretrained(
            spec.path, subfolder="image_encoder", dtype=torch.float32, local_files_only=True
        )
    pipe = DiffusionPipeline.from_pretrained(spec.path, dtype=model_dtype, local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    if cpu_offload and device.type == "cuda":
        # Each model moves to the GPU only while it runs: the 14B transformer alone, not the
        # UMT5-XXL text encoder beside it, is what must fit.
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if not isinstance(pipe, WanPipeline | WanImageToVideoPipeline):  # model_index.json names the class
        raise ValueError(f"{spec.path} holds a {type(pipe).__name__}, not a Wan pipeline")
    return pipe


def load_motion_adapter(spec: ModelSpec, dtype: torch.dtype) -> MotionAdapter:
    adapter: MotionAdapter = MotionAdapter.from_pretrained(spec.path, dtype=dtype, local_files_only=True)
    return adapter


def animatediff_pipeline(sd_pipe: DiffusionPipeline, adapter: MotionAdapter) -> AnimateDiffPipeline:
    """Shares the loaded SD pipeline's text encoder, tokenizer and VAE; only the UNet is rebuilt
    (as a UNetMotionModel holding the checkpoint's weights plus the motion modules).
    """
    # from_pipe casts the shared modules to float32 unless given their dtype.
    pipe: AnimateDiffPipeline = AnimateDiffPipeline.from_pipe(sd_pipe, motion_adapter=adapter, dtype=sd_pipe.unet.dtype)
    pipe.to(sd_pipe.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    check_finite(frames, "denoising and decoding the video frames")
    scaled: np.ndarray = (np.clip(frames, 0.0, 1.0) * 255).round()
    return scaled.astype(np.uint8)


def run_wan(
    pipe: WanPipeline | WanImageToVideoPipeline, job: VideoJob, progress: ReportProgress | None = None
) -> np.ndarray:
    kwargs: dict[str, Image.Image] = {}
    if job.image is not None:
        kwargs["image"] = Image.open(io.BytesIO(job.image)).convert("RGB")
    output = pipe(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt or None,
        height=job.height,
        width=job.width,
        num_frames=job.num_frames,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance_scale,
        generator=seed_generators((job.seed,))[0],
        output_type="np",
        callback_on_step_end=step_callback(progress),
        **kwargs,
    )
    return _to_uint8(output.frames[0])


def run_animatediff(
    pipe: AnimateDiffPipeline,
    base_scheduler_config: dict[str, Any],
    job: VideoJob,
    progress: ReportProgress | None = None,
) -> np.ndarray:
    # The motion modules were trained with a linear beta schedule; AnimateDiff's own settings.
    pipe.scheduler = DDIMScheduler.from_config(
        base_scheduler_config, beta_schedule="linear", clip_sample=False, timestep_spacing="linspace", steps_offset=1
    )
    prompt_embeds, negative_embeds = encode_prompt_pair(
        job.prompt, job.negative_prompt, pipe.tokenizer, pipe.text_encoder, pipe.device
    )
    output = pipe(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        height=job.height,
        width=job.width,
        num_frames=job.num_frames,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance_scale,
        generator=seed_generators((job.seed,))[0],
        output_type="np",
        callback_on_step_end=step_callback(progress),
    )
    return _to_uint8(output.frames[0])
