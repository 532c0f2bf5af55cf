"""Credit costs, in millicredits. The formulas are documented in the README ("Credits")."""

from __future__ import annotations

from daguerre.services.accounts import to_milli
from daguerre.settings import Pricing

_REFERENCE_PIXELS = 512 * 512
_REFERENCE_STEPS = 30


def image_cost(
    pricing: Pricing,
    width: int,
    height: int,
    steps: int,
    num_images: int,
    lcm: bool = False,
    reference_pixels: int = _REFERENCE_PIXELS,
) -> int:
    """cost = num_images * max(min_image_cost, image_rate * pixels/reference * steps/30), to 0.01;
    half that with lcm, as the hosted service charges. The reference is the model family's native
    size (SD 1.5: 512², SDXL: 1024²): a family's native image at 30 steps costs image_rate."""
    per_image = pricing.image_rate * (width * height / reference_pixels) * (steps / _REFERENCE_STEPS)
    factor = 0.5 if lcm else 1.0
    return to_milli(round(num_images * max(pricing.min_image_cost, per_image) * factor, 2))


_MEGAPIXEL = 1024 * 1024


def upscale_cost(pricing: Pricing, width: int, height: int) -> int:
    """cost = max(min_upscale_cost, upscale_rate * output pixels/1024²), to 0.01."""
    return to_milli(round(max(pricing.min_upscale_cost, pricing.upscale_rate * width * height / _MEGAPIXEL), 2))


def hires_fix_cost(
    pricing: Pricing, width: int, height: int, denoising_steps: int, reference_pixels: int = _REFERENCE_PIXELS
) -> int:
    """The upscale's cost, plus one image of the model's family at the output size for the
    denoising steps it runs."""
    render = (
        image_cost(pricing, width, height, denoising_steps, 1, reference_pixels=reference_pixels)
        if denoising_steps
        else 0
    )
    return upscale_cost(pricing, width, height) + render


_REFERENCE_VIDEO_PIXELS = 832 * 480
_REFERENCE_FRAMES = 81


def video_cost(pricing: Pricing, width: int, height: int, num_frames: int, steps: int) -> int:
    """cost = max(min_video_cost, video_rate * pixels/(832x480) * frames/81 * steps/30), to 0.01.

    Both the transformer's work and the VAE's grow with pixels times frames, so the price does too;
    width and height are the resolution's nominal size (832x480, 1280x720).
    """
    per_clip = (
        pricing.video_rate
        * (width * height / _REFERENCE_VIDEO_PIXELS)
        * (num_frames / _REFERENCE_FRAMES)
        * (steps / _REFERENCE_STEPS)
    )
    return to_milli(round(max(pricing.min_video_cost, per_clip), 2))
