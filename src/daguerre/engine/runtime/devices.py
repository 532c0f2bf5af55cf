"""Device and dtype choice: CUDA in half precision when present, else CPU in float32."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(setting: str) -> torch.device:
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return _DTYPES[setting]
    # fp16 rather than bf16 by default: SD 1.x VAEs and UNets were trained and are shipped in fp16.
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32
