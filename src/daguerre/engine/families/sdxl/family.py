from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from daguerre.engine.diffusers_classes import (
    DiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from daguerre.engine.families.base import ImageFamily, Task
from daguerre.engine.families.sdxl.traits import TRAITS
from daguerre.engine.loading.clip_tokenizer import EOS
from daguerre.engine.prompts.conditioning import Conditioning
from daguerre.engine.prompts.encoding import Chunk, apply_weights, chunk_ids, chunk_pair

# OpenCLIP pads with token 0 ("!"), as SDXL's tokenizer_2 says.
OPEN_CLIP_PAD = "!"
# Both encoders give the penultimate layer's hidden state, as SDXL was trained (and diffusers and
# A1111 encode); A1111's clip skip n > 2 reads layer -n instead, with no final layer norm.
PENULTIMATE = 2


class SDXL(ImageFamily):
    traits = TRAITS
    text_to_image = StableDiffusionXLPipeline
    tasks: ClassVar[dict[Task, type[DiffusionPipeline]]] = {
        "image_to_image": StableDiffusionXLImg2ImgPipeline,
        "controlnet": StableDiffusionXLControlNetPipeline,
    }
    # No invisible watermark: diffusers adds one when the optional package is installed, which
    # would make the same request's pixels depend on the environment.
    options: ClassVar[dict[str, Any]] = {"add_watermarker": False}
    tokenizers: ClassVar[dict[str, str]] = {"tokenizer": EOS, "tokenizer_2": OPEN_CLIP_PAD}
    lora_components = ("unet", "text_encoder", "text_encoder_2")

    def condition(self, pipe: DiffusionPipeline, prompt: str, negative_prompt: str, clip_skip: int = 1) -> Conditioning:
        """A1111's chunking and weighting through both encoders: each chunk's two hidden states
        side by side (768 + 1280 wide), weighted as one; the pooled embedding is OpenCLIP's of the
        first chunk, as A1111 takes it. An empty negative prompt is zeros when the model says so
        (`force_zeros_for_empty_prompt`, SDXL base's setting), as diffusers does."""
        positive_chunks, negative_chunks = chunk_pair(pipe.tokenizer, prompt, negative_prompt)
        layer = -max(PENULTIMATE, clip_skip)
        positive, pooled = _encode(pipe, positive_chunks, layer)
        negative, negative_pooled = _encode(pipe, negative_chunks, layer)
        if not negative_prompt.strip() and pipe.config.get("force_zeros_for_empty_prompt", True):
            negative, negative_pooled = torch.zeros_like(negative), torch.zeros_like(negative_pooled)
        return Conditioning(positive, negative, pooled, negative_pooled)


@torch.no_grad()
def _encode(pipe: DiffusionPipeline, chunks: list[Chunk], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer: CLIPTokenizer = pipe.tokenizer
    tokenizer_2: CLIPTokenizer = pipe.tokenizer_2
    first: CLIPTextModel = pipe.text_encoder
    second: CLIPTextModelWithProjection = pipe.text_encoder_2
    ids, weights = chunk_ids(chunks, tokenizer)
    if len(tokenizer) > tokenizer.vocab_size or len(tokenizer_2) > tokenizer_2.vocab_size:
        # Tokens an embedding added may have other ids in the second vocabulary: map them by name.
        chunks = [Chunk(_ids(tokenizer_2, tokenizer.convert_ids_to_tokens(c.tokens)), c.weights) for c in chunks]
    ids_2, _ = chunk_ids(chunks, tokenizer_2)  # padded with OpenCLIP's own padding token
    device = first.device
    hidden_1 = first(torch.tensor(ids, device=device), output_hidden_states=True).hidden_states[layer]
    output_2 = second(torch.tensor(ids_2, device=second.device), output_hidden_states=True)
    hidden_2 = output_2.hidden_states[layer].to(device)
    hidden = apply_weights(torch.cat([hidden_1, hidden_2], dim=-1), weights)
    return hidden, output_2.text_embeds[:1].to(device)


def _ids(tokenizer: CLIPTokenizer, tokens: str | list[str]) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(tokens)
    return ids if isinstance(ids, list) else [ids]


FAMILY = SDXL()
