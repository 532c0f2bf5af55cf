"""POST /api/video: the contract's parameters (access_token, model_id, prompt, image_url,
resolution, fps) and this server's documented extras, with their defaults and ranges.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from daguerre.protocol.fields import Int, Prompt, Text
from daguerre.protocol.inference import MAX_SEED

MIN_FPS = 1
MAX_FPS = 60
# Wan 2.1 was trained on 81-frame clips (5 s at 16 fps); nothing on this server makes longer ones.
MAX_FRAMES = 81


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


Resolution = Annotated[Literal["480p", "720p"], BeforeValidator(_lower)]


class VideoRequest(BaseModel):
    # Unknown fields are ignored so clients written for newer versions of the API keep working.
    model_config = ConfigDict(extra="ignore")

    access_token: Text = Field(description="Access token")
    model_id: Text = Field(description="A video model from /api/models (video_models)")
    prompt: Prompt = Field(description="What happens in the clip")
    image_url: Text | None = Field(
        None, description="Required for image-to-video models: the first frame (http or https URL)"
    )
    resolution: Resolution = Field(
        "480p", description="480p (832x480) or 720p (1280x720); a portrait input image gives 480x832 / 720x1280"
    )
    fps: Int = Field(16, ge=MIN_FPS, le=MAX_FPS, description="Frames per second of the MP4")
    num_frames: Int | None = Field(
        None,
        ge=1,
        le=MAX_FRAMES,
        description="Clip length in frames (seconds = num_frames / fps); default the model's: Wan 81, "
        "AnimateDiff 16. Wan takes 4k+1 (5, 9, ..., 81), AnimateDiff up to its motion adapter's limit (32)",
    )
    version: Text | None = Field(None, description="Model version; default the latest")
    negative_prompt: Prompt = Field("", description="What to keep out of the clip")
    steps: Int | None = Field(None, ge=1, le=50, description="Denoising steps; default Wan 30, AnimateDiff 25")
    scale: float | None = Field(None, ge=1, le=20, description="Guidance scale; default Wan 5, AnimateDiff 7.5")
    seed: Int = Field(-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed")


class VideoResponse(BaseModel):
    error_code: Literal[0] = 0
    video_url: str = Field(description="H.264 MP4 (yuv420p)")
    inf_id: str
    credit_cost: float
    width: int
    height: int
    num_frames: int
    fps: int
    seed: int
