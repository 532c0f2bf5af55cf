"""Requests to /api/video and a look inside the MP4s it returns."""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np

from tests.support.api import Api

FAST = {"num_frames": 5, "steps": 1, "scale": 1}  # scale 1: no classifier-free guidance, half the work


def video(api: Api, **fields: Any) -> dict[str, Any]:
    """POST /api/video on the tiny Wan text-to-video model unless `model_id` says otherwise."""
    return api.post("/api/video", **{"model_id": "wan", "prompt": "a cat walking", **fields})


def probe(data: bytes) -> dict[str, Any]:
    """Decode the whole MP4 with FFmpeg's own decoder (PyAV)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "fps": stream.average_rate,
            "frames": len(frames),
            "size": (stream.width, stream.height),
            "pixels": np.stack(frames),
        }
