"""Super-resolution with spandrel models (ESRGAN, Real-ESRGAN and the rest of the family), in
overlapping tiles, to any size.

Memory: the model sees one tile at a time, so its activations grow with the tile, not the image.
Tile outputs are blended into a float band one tile row tall and as wide as the output; rows move
to the 8-bit result as soon as no later tile can reach them. Only that 8-bit result is as large as
the image. (Merging libraries such as `tiler` keep a full-size float buffer instead: four times
the result, plus its weights, which is the growth this avoids.)

Seams: neighbouring tiles share `overlap` input pixels. Across the shared strip, each tile's
weight ramps linearly from near zero at its own edge, where its convolutions saw padding instead
of the neighbour's pixels, so the output there comes mostly from the tile that saw the context.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedDtypeError

from daguerre.engine.jobs import ModelSpec, ReportProgress, Tiling, UpscaleJob
from daguerre.engine.pipelines.outputs import check_finite
from daguerre.imaging import encode_png

# A spandrel super-resolution model, whatever its architecture.
Upscaler = ImageModelDescriptor[torch.nn.Module]


def load_upscaler(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> Upscaler:
    descriptor = ModelLoader(device).load_from_file(spec.path)
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "SR":
        raise ValueError(f"{spec.path} is not a super-resolution model")
    try:
        descriptor.to(dtype=dtype)
    except UnsupportedDtypeError:
        descriptor.to(dtype=torch.float32)  # a few architectures are unstable in half precision
    return descriptor.eval()


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of side min(tile, length) covering [0, length), spread evenly so that
    neighbours share at least `overlap` pixels."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _blend_weights(starts: list[int], size: int, fade: int) -> list[torch.Tensor]:
    """Each tile's weights along one axis (output pixels): ramping up over `fade` pixels from a
    side that has a neighbour, then divided by their sum so that at every pixel the tiles' weights
    add up to 1. Rows and columns share one grid, so the 2-D weights (outer products) add up to 1
    as well: the band accumulates final values, with no weight buffer or division."""
    ramps = []
    for index in range(len(starts)):
        ramp = torch.ones(size)
        edge = (torch.arange(fade) + 0.5) / fade
        if fade and index > 0:
            ramp[:fade] = edge
        if fade and index < len(starts) - 1:
            ramp[-fade:] = edge.flip(0)
        ramps.append(ramp)
    total = torch.zeros(starts[-1] + size)
    for start, ramp in zip(starts, ramps, strict=True):
        total[start : start + size] += ramp
    return [ramp / total[start : start + size] for start, ramp in zip(starts, ramps, strict=True)]


def _to_uint8(values: torch.Tensor) -> np.ndarray:
    """(3, H, W) floats in [0, 1] to an (H, W, 3) 8-bit array."""
    return values.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@torch.inference_mode()
def upscale_tiled(
    model: Upscaler, image: np.ndarray, tiling: Tiling, progress: ReportProgress | None = None
) -> np.ndarray:
    """Run `model` over an (H, W, 3) 8-bit image in tiles; returns the (H*s, W*s, 3) result.
    `progress` hears of each tile done (and may raise to stop between tiles)."""
    scale = model.scale
    height, width = image.shape[:2]
    tile_h, tile_w = min(tiling.tile, height), min(tiling.tile, width)
    rows = tile_starts(height, tiling.tile, tiling.overlap)
    columns = tile_starts(width, tiling.tile, tiling.overlap)
    fade = tiling.overlap * scale
    row_weights = _blend_weights([y * scale for y in rows], tile_h * scale, fade)
    column_weights = _blend_weights([x * scale for x in columns], tile_w * scale, fade)

    result = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    band = torch.zeros(3, tile_h * scale, width * scale)
    band_top = 0  # output row of the band's first row
    for row, y in enumerate(rows):
        shift = y * scale - band_top
        if shift:
            # Rows above this tile row are final: no later tile reaches them.
            result[band_top : band_top + shift] = _to_uint8(band[:, :shift])
            band = torch.cat([band[:, shift:], torch.zeros(3, shift, width * scale)], dim=1)
            band_top += shift
        for column, x in enumerate(columns):
            pixels = torch.tensor(image[y : y + tile_h, x : x + tile_w]).permute(2, 0, 1).unsqueeze(0)
            output = model(pixels.to(model.device, model.dtype).div_(255))[0].float().cpu()
            check_finite(output, "upscaling the image")
            weight = row_weights[row][:, None] * column_weights[column][None, :]
            band[:, :, x * scale : (x + tile_w) * scale].addcmul_(output, weight)
            if progress is not None:
                progress(row * len(columns) + column + 1, len(rows) * len(columns))
    result[band_top:] = _to_uint8(band)
    return result


def upscale_image(
    model: Upscaler | None,
    image: Image.Image,
    width: int,
    height: int,
    tiling: Tiling,
    progress: ReportProgress | None = None,
) -> Image.Image:
    """Resize to exactly width x height: the model runs (repeatedly, if its native factor falls
    short, as A1111 does) until the image reaches the size, then Lanczos takes it to the exact
    size. Without a model, Lanczos does it all."""
    if model is not None:
        pixels = np.asarray(image.convert("RGB"))
        while pixels.shape[1] < width or pixels.shape[0] < height:
            pixels = upscale_tiled(model, pixels, tiling, progress)
        image = Image.fromarray(pixels)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def upscale(model: Upscaler, job: UpscaleJob, progress: ReportProgress | None = None) -> bytes:
    source = Image.open(io.BytesIO(job.image))
    return encode_png(upscale_image(model, source, job.width, job.height, job.tiling, progress))
