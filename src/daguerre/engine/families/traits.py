"""What the server outside the engine knows of a model family: plain data, no torch, so the API
and the services can check sizes and price requests without loading the engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyTraits:
    name: str  # the catalog's `family` and /api/models' base_model: sd15, sdxl
    title: str
    # The diffusers pipeline class a folder of this family names in its model_index.json.
    pipeline_class: str
    # Sizes a request may ask for (multiples of `size_multiple`), and the size a model of the
    # family renders when the request names none (a model's `default_size` option overrides it).
    min_size: int
    max_size: int
    size_multiple: int
    default_size: tuple[int, int] | None  # None: the contract's default (512x768)
    # The price of an image scales with its pixels relative to these (one reference image of the
    # family costs image_rate at 30 steps).
    reference_pixels: int
