"""The engine's execution options as plain data, without torch: the gateway builds them from the
settings and hands them to an in-process engine or, pickled, to each Ray replica
(runtime/execution.py applies them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

AttentionKind = Literal["sdpa", "classic"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass(frozen=True)
class ExecutionOptions:
    channels_last: bool | None = None  # None: on CUDA only
    attention: AttentionKind = "sdpa"
    fuse_qkv: bool = False
    compile: bool = False
    compile_mode: CompileMode = "default"
    compile_max_shapes: int = 16
    compile_cache_dir: Path | None = None

    def uses_channels_last(self, device_type: str) -> bool:
        return device_type == "cuda" if self.channels_last is None else self.channels_last
