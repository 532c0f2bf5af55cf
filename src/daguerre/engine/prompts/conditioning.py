"""A job's prompts as the denoising pass takes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Conditioning:
    """The prompt and negative prompt, encoded: (1, 77 x chunks, dim) each, as many chunks in
    both; families with a pooled text embedding (SDXL) add it, (1, dim) each."""

    positive: torch.Tensor
    negative: torch.Tensor
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None


def stack_pooled(conditionings: list[Conditioning], counts: list[int]) -> dict[str, Any]:
    """The pooled embeddings of a batch as pipeline inputs, one row per image; none for families
    without them."""
    if conditionings[0].pooled is None:
        return {}
    pooled, negative = [], []
    for conditioning, count in zip(conditionings, counts, strict=True):
        assert conditioning.pooled is not None and conditioning.negative_pooled is not None
        pooled.append(conditioning.pooled.expand(count, -1))
        negative.append(conditioning.negative_pooled.expand(count, -1))
    return {"pooled_prompt_embeds": torch.cat(pooled), "negative_pooled_prompt_embeds": torch.cat(negative)}
