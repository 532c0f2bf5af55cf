"""What crosses the engine boundary: plain, picklable data and no torch, so the same jobs can go
to an in-process engine today and to remote GPU workers (Ray Serve) later.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Where a model version lives and how to load it; the engine's cache key."""

    id: str
    version: str
    path: str
    format: str  # diffusers | single_file
    family: str
    config_path: str | None = None


@dataclass(frozen=True)
class TextToImageJob:
    model: ModelSpec
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    seeds: tuple[int, ...]


Job = TextToImageJob


@dataclass(frozen=True)
class ImagesResult:
    images: tuple[bytes, ...]  # PNG-encoded, in the order of the job's seeds
    extension: str = ".png"


@dataclass(frozen=True)
class EngineStatus:
    device: str
    dtype: str
    queued: int
    loaded_models: tuple[str, ...]
