"""Uploaded base images (`init_image_file`): checked, decoded safely and brought to the request's size.

Only the prepared image, as PNG bytes at exactly width x height, goes on to the engine, so the
engine never decodes anything a client sent.

- Size: at most `max_upload_bytes`; the body is read no further than that.
- Decompression bombs: the pixel count is read from the header and checked against
  `max_upload_pixels` before any pixel is decoded.
- Truncated or undecodable files are refused (Pillow's LOAD_TRUNCATED_IMAGES stays off).
- EXIF orientation is applied, as a photo viewer shows the photo.
- Transparency (RGBA, LA, palette with a transparent index) is composited onto
  `upload_background` (white by default, as A1111's img2img does).
- Resize rule: scale to cover width x height keeping the aspect ratio, then crop the centre.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.datastructures import UploadFile

from daguerre.errors import InvalidParameter
from daguerre.imaging import encode_png

FIELD = "init_image_file"


def _bad(message: str) -> InvalidParameter:
    return InvalidParameter(FIELD, f"invalid {FIELD}: {message}")


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _bad(f"the file is larger than the upload limit of {max_bytes} bytes")
    if not data:
        raise _bad("the file is empty")
    return data


def _flatten(image: Image.Image, background: str) -> Image.Image:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background)
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def prepare_image(data: bytes, width: int, height: int, max_pixels: int, background: str = "white") -> bytes:
    """Decode an uploaded image safely and return it as PNG bytes of exactly width x height."""
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is the guard; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise _bad(f"{image.width}x{image.height} is {pixels} pixels, more than the limit of {max_pixels}")
            # JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers the target (either
            # orientation, as EXIF may turn it): a large photo is never decoded at full size.
            side = max(width, height)
            image.draft("RGB", (side, side))
            image.load()
    except UnidentifiedImageError:
        raise _bad("not an image Pillow can read (send PNG, JPEG, WebP, ...)") from None
    except Image.DecompressionBombError as exc:
        raise _bad(f"decompression bomb refused: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _bad(f"the image could not be decoded, it may be truncated or corrupt ({exc})") from None
    image = _reduced(image, max(width, height))
    image = ImageOps.exif_transpose(image)
    image = _flatten(image, background)
    image = ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    return encode_png(image)


def _reduced(image: Image.Image, side: int) -> Image.Image:
    """A large decoded image shrunk by a whole factor (box filter, one small copy) while it still
    covers twice `side` in its shorter dimension, so the later steps (rotation, flattening, the
    Lanczos fit) work on a small copy, and the full-size one can be freed at once."""
    factor = min(image.size) // (2 * side)
    if factor < 2 or image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        return image
    return image.reduce(factor)
