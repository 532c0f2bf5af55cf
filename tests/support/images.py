"""Test pictures and their encoding and decoding."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def png(image: Image.Image, **save: Any) -> bytes:
    """Encode an image, as PNG unless `format=` says otherwise; other keywords go to Pillow's save."""
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def solid_png(width: int, height: int, color: str = "green") -> bytes:
    """A PNG of one colour: for tests where only the size and the format matter."""
    return png(Image.new("RGB", (width, height), color))


def photo(width: int = 160, height: int = 128, seed: int = 0) -> Image.Image:
    """A test picture with shapes and edges (random noise would make Canny draw everything)."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:] = rng.integers(0, 255, 3)
    for _ in range(6):
        x, y = rng.integers(0, width - 20), rng.integers(0, height - 20)
        w, h = rng.integers(10, 40, 2)
        pixels[y : y + h, x : x + w] = rng.integers(0, 255, 3)
    return Image.fromarray(pixels)


def decode(data: bytes) -> np.ndarray:
    """Encoded image bytes as an RGB uint8 array of shape (height, width, 3)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
