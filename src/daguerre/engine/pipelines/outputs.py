"""Results are checked before they are reported: a NaN or infinite value in a decoded image or
frame would otherwise be written out as black (or noise) and reported as a success. Half-precision
overflow in a VAE or UNet is the usual cause."""

from __future__ import annotations

import logging

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from daguerre.engine.runtime.failures import new_error_id
from daguerre.errors import GenerationFailed
from daguerre.imaging import encode_png

log = logging.getLogger("daguerre.engine")


class InvalidOutput(GenerationFailed):
    """The model computed NaN or infinite values."""


def check_finite(values: np.ndarray | torch.Tensor, what: str) -> None:
    """Raise InvalidOutput unless every value is finite; `what` names the stage ("decoding the image")."""
    finite = bool(torch.isfinite(values).all()) if isinstance(values, torch.Tensor) else bool(np.isfinite(values).all())
    if finite:
        return
    error_id = new_error_id()
    log.error("generation failed while %s: non-finite (NaN/inf) values; error id %s", what, error_id)
    raise InvalidOutput(
        f"generation failed while {what}: the model produced invalid (NaN or infinite) values, so there is no "
        f"image to return; the operator can run this model in float32 or with a VAE fixed for half precision "
        f"(error id {error_id})",
        error_id=error_id,
    )


def to_pil(images: np.ndarray, what: str) -> list[Image.Image]:
    """(N, H, W, 3) floats in [0, 1], as diffusers' output_type="np" returns them, to PIL images
    the way its output_type="pil" would have (same bytes), once checked."""
    check_finite(images, what)
    converted: list[Image.Image] = VaeImageProcessor.numpy_to_pil(images)
    return converted


def encode_pngs(images: np.ndarray, what: str) -> list[bytes]:
    """A job's images, checked and PNG-encoded; off the device's path, on the engine's CPU pool."""
    return [encode_png(image) for image in to_pil(images, what)]
