"""Session-built tiny LoRAs, ControlNets and annotators for the img2img/ControlNet/LoRA/LCM tests,
and helpers to register them; test modules import the fixtures they use."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daguerre.demo.tiny_models import (
    build_tiny_controlnet,
    build_tiny_depth_annotator,
    build_tiny_lora,
    build_tiny_openpose_annotator,
)
from daguerre.services.catalog import Format, Kind, ModelRecord, NewModel
from daguerre.services.probing import inspect_model
from tests.support.api import Api


@pytest.fixture(scope="session")
def extras_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("extras")


@pytest.fixture(scope="session")
def lora_files(tiny_sd15: Path, extras_dir: Path) -> dict[str, Path]:
    """Two LoRAs (a, b), LoRA a also in the kohya layout, and an LCM-LoRA."""
    return {
        "a": build_tiny_lora(tiny_sd15, extras_dir / "a.safetensors", "diffusers", seed=1),
        "a-kohya": build_tiny_lora(tiny_sd15, extras_dir / "a-kohya.safetensors", "kohya", seed=1),
        "b": build_tiny_lora(tiny_sd15, extras_dir / "b.safetensors", "kohya", seed=2),
        "lcm": build_tiny_lora(tiny_sd15, extras_dir / "lcm.safetensors", "diffusers", seed=3),
    }


@pytest.fixture(scope="session")
def controlnet_dirs(tiny_sd15: Path, extras_dir: Path) -> dict[str, Path]:
    return {
        name: build_tiny_controlnet(tiny_sd15, extras_dir / f"controlnet-{name}", seed=seed)
        for seed, name in enumerate(("canny", "depth", "openpose"))
    }


@pytest.fixture(scope="session")
def annotator_dirs(extras_dir: Path) -> dict[str, Path]:
    return {
        "depth": build_tiny_depth_annotator(extras_dir / "depth"),
        "openpose": build_tiny_openpose_annotator(extras_dir / "openpose"),
    }


def register(api: Api, kind: str, path: Path, model_id: str, family: str | None = None, **options: Any) -> ModelRecord:
    """Register as `daguerre models add --kind KIND` does: the inspector decides format and family."""
    info = inspect_model(kind, path)
    return api.services.catalog.add(
        NewModel(
            path=path,
            format=Format(info.format),
            kind=Kind(kind),
            title=model_id,
            id=model_id,
            family=family or info.family,
            options={**info.options, **options},
        )
    )


def png(image: Image.Image, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def photo(width: int = 160, height: int = 128, seed: int = 0) -> Image.Image:
    """A test picture with shapes and edges (random noise would make Canny draw everything)."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:] = rng.integers(0, 255, 3)
    for _ in range(6):
        x, y = rng.integers(0, width - 20), rng.integers(0, height - 20)
        w, h = rng.integers(10, 40, 2)
        pixels[y : y + h, x : x + w] = rng.integers(0, 255, 3)
    return Image.fromarray(pixels)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def infer_with_image(api: Api, image: bytes, **fields: Any) -> dict[str, Any]:
    from tests.support.api import SMALL

    data = {"access_token": api.token, "model_id": "tiny", "prompt": "a cat", **SMALL, **fields}
    response = api.client.post("/api/inference", data=data, files={"init_image_file": ("base.png", image, "image/png")})
    assert response.status_code == 200, response.text
    return response.json()
