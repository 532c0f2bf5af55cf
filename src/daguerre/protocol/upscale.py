"""POST /api/upscale: the contract's parameters, defaults and ranges, in one place."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from daguerre.protocol.fields import Text

HIRES_FIX_SCALE = 2  # hires fix renders at twice the source's size, A1111's default


class UpscaleRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    access_token: Text = Field(description="Access token")
    inf_id: Text = Field(description="Id of the inference that made the image, from /api/inference")
    url: Text = Field(description="URL of the image to upscale: one of that inference's outputs")
    type: Literal["esrgan", "hires_fix"] = Field("esrgan", description="Upscale type")
    scale: float = Field(2, ge=2, le=4, description="How much to upscale; esrgan only")
    strength: float = Field(0.6, ge=0, le=1, description="How strongly hires fix re-renders; hires_fix only")


class UpscaleResponse(BaseModel):
    error_code: Literal[0] = 0
    output: str = Field(description="URL of the upscaled image")
    credit_cost: float
    inf_id: str = Field(description="Id of this upscale; esrgan can upscale its output again")
    width: int
    height: int
