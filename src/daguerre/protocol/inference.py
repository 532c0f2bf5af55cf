"""POST /api/inference: the contract's parameters, defaults and ranges, in one place."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from daguerre.engine import families
from daguerre.protocol.fields import Bool, Int, Prompt, Text

SCHEDULERS = ("DPMSolverMultistep", "K_EULER_ANCESTRAL", "DDIM", "K_EULER", "PNDM", "KLMS")
SchedulerName = Literal["DPMSolverMultistep", "K_EULER_ANCESTRAL", "DDIM", "K_EULER", "PNDM", "KLMS"]
DEFAULT_SCALE = 7.5
DEFAULT_SCHEDULER: SchedulerName = "DPMSolverMultistep"
MAX_SEED = 2**32 - 1
# A1111's sampler names, accepted for `scheduler` (an addition): the contract's scheduler each
# means, and whether it asks for Karras sigmas. DDIM is the same name in both.
SAMPLER_ALIASES: dict[str, tuple[SchedulerName, bool]] = {
    "DPM++ 2M": ("DPMSolverMultistep", False),
    "DPM++ 2M Karras": ("DPMSolverMultistep", True),
    "Euler a": ("K_EULER_ANCESTRAL", False),
    "Euler": ("K_EULER", False),
    "Euler Karras": ("K_EULER", True),
    "PLMS": ("PNDM", False),
    "LMS": ("KLMS", False),
    "LMS Karras": ("KLMS", True),
}
# The schedulers whose diffusers class can space its steps by Karras et al.'s sigmas.
KARRAS_SCHEDULERS: tuple[SchedulerName, ...] = ("DPMSolverMultistep", "K_EULER", "KLMS")
MAX_CLIP_SKIP = 12
ControlNetName = Literal["canny", "depth", "openpose"]
LORA_SCALE_RANGE = (-2.0, 2.0)
# The widest range of any model family; each model's family narrows it (services/inference.py):
# SD 1.5 keeps the contract's 128 to 896, SDXL goes to 1536.
MIN_SIZE = min(families.traits(name).min_size for name in families.names())
MAX_SIZE = max(families.traits(name).max_size for name in families.names())
SIZE_NOTE = ", ".join(
    f"{families.traits(name).title} models to {families.traits(name).max_size}" for name in families.names()
)


class InferenceRequest(BaseModel):
    # Unknown fields are ignored so clients written for newer versions of the API keep working.
    model_config = ConfigDict(extra="ignore")

    access_token: Text = Field(description="Access token")
    model_id: Text = Field(description="Id of an image model from /api/models")
    prompt: Prompt = Field(description="A1111 weighting syntax; longer than 77 tokens is fine")
    version: Text | None = Field(None, description="Model version; default the latest")
    width: Int = Field(
        512, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8, description=f"{SIZE_NOTE}; default 512 (SDXL: 1024)"
    )
    height: Int = Field(
        768, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8, description=f"{SIZE_NOTE}; default 768 (SDXL: 1024)"
    )
    negative_prompt: Prompt = ""
    use_default_neg: Bool = Field(True, description="Append the model's (or server's) default negative prompt")
    steps: Int = Field(30, ge=1, le=50, description="Number of inference steps")
    scale: float | None = Field(None, ge=1, le=20, description="Guidance scale; default the model's, else 7.5")
    num_images: Int = Field(4, ge=1, description="Upper bound: the max_num_images setting")
    seed: Int = Field(-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed; image i uses seed + i")
    scheduler: SchedulerName | None = Field(
        None,
        description="Default the model's, else DPMSolverMultistep; A1111 sampler names (DPM++ 2M Karras, Euler a, "
        "...) are accepted too",
    )
    karras: Bool | None = Field(
        None,
        description="Karras noise schedule (DPMSolverMultistep, K_EULER, KLMS); default the model's, else false",
    )
    clip_skip: Int | None = Field(
        None,
        ge=1,
        le=MAX_CLIP_SKIP,
        description="A1111's clip skip: 2 reads the text encoder's penultimate layer; default the model's, else 1",
    )
    lora: Text | None = Field(
        None,
        description="Id of a LoRA from /api/models; several: ids separated by commas. <lora:id:weight> "
        "tags in the prompt add more",
    )
    lora_scale: Text = Field(
        "0.75",
        description="From -2 to 2; several LoRAs: one scale for all, or one per id separated by commas",
        # A string (it may list several), so the range of each value travels as an extension that
        # clients such as the playground read.
        json_schema_extra={"x-minimum": LORA_SCALE_RANGE[0], "x-maximum": LORA_SCALE_RANGE[1]},
    )
    lcm: Bool = Field(False, description="Fast LCM sampling at half the cost: default steps 6, scale 1.5")
    image_strength: float = Field(0.75, ge=0, le=1, description="img2img: how much to transform init_image_file")
    controlnet: ControlNetName | None = Field(
        None, description="Needs init_image_file; image_strength then has no effect"
    )
    controlnet_preprocess: Bool = Field(
        True, description="false: init_image_file is a ready-made control map, used as sent (after resizing)"
    )

    @model_validator(mode="before")
    @classmethod
    def _sampler_alias(cls, data: object) -> object:
        """An A1111 sampler name becomes its scheduler, with Karras when the name says so and the
        request does not say otherwise."""
        if isinstance(data, dict) and isinstance(data.get("scheduler"), str):
            alias = SAMPLER_ALIASES.get(data["scheduler"].strip())
            if alias is not None:
                scheduler, karras = alias
                data = {**data, "scheduler": scheduler}
                if karras and data.get("karras") in (None, ""):
                    data["karras"] = True
        return data


class InferenceResponse(BaseModel):
    error_code: Literal[0] = 0
    images: list[str]
    credit_cost: float
    inf_id: str
    seeds: list[int] = Field(description="Seed of each image, in order")
    control_image: str | None = Field(None, description="URL of the control map used (ControlNet requests only)")
