"""Frames to an MP4 that browsers play: H.264 in yuv420p, at the clip's frame rate.

imageio-ffmpeg carries a static ffmpeg, so no system ffmpeg is needed. diffusers'
`export_to_video` is not used: without imageio installed it silently falls back to OpenCV's
MPEG-4 Part 2, which browsers do not play, and it cannot ask for faststart.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """frames: uint8 array (frames, height, width, 3); width and height must be even (yuv420p)."""
    import imageio_ffmpeg  # imported here so that a missing one fails this stage with a clear message

    _, height, width, _ = frames.shape
    with tempfile.TemporaryDirectory(prefix="daguerre-video-") as folder:
        path = Path(folder) / "clip.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(path),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=None,
            # Constant quality; faststart puts the index first so browsers start playing at once.
            output_params=["-crf", "18", "-preset", "fast", "-movflags", "+faststart"],
            # Never let the writer resize: the sizes served are multiples of 16 already, or even.
            macro_block_size=1,
            ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return path.read_bytes()
