from __future__ import annotations

from typing import Any, ClassVar

from daguerre.engine.diffusers_classes import (
    DiffusionPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from daguerre.engine.families.base import ImageFamily, Task
from daguerre.engine.families.sd15.traits import TRAITS
from daguerre.engine.loading.clip_tokenizer import EOS
from daguerre.engine.prompts.conditioning import Conditioning
from daguerre.engine.prompts.encoding import encode_prompt_pair


class SD15(ImageFamily):
    traits = TRAITS
    text_to_image = StableDiffusionPipeline
    tasks: ClassVar[dict[Task, type[DiffusionPipeline]]] = {
        "image_to_image": StableDiffusionImg2ImgPipeline,
        "controlnet": StableDiffusionControlNetPipeline,
    }
    # No safety checker: diffusers would otherwise expect one (and its feature extractor).
    options: ClassVar[dict[str, Any]] = {"requires_safety_checker": False}
    load_options: ClassVar[dict[str, Any]] = {"safety_checker": None, "feature_extractor": None}
    tokenizers: ClassVar[dict[str, str]] = {"tokenizer": EOS}
    lora_components = ("unet", "text_encoder")

    def condition(self, pipe: DiffusionPipeline, prompt: str, negative_prompt: str, clip_skip: int = 1) -> Conditioning:
        # The text encoder's own device: `pipe.device` walks every module of every component.
        positive, negative = encode_prompt_pair(
            prompt, negative_prompt, pipe.tokenizer, pipe.text_encoder, pipe.text_encoder.device, clip_skip
        )
        return Conditioning(positive, negative)


FAMILY = SD15()
