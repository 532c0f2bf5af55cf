"""Credit costs, in millicredits. The formulas are documented in the README ("Credits")."""

from __future__ import annotations

from daguerre.services.accounts import to_milli
from daguerre.settings import Pricing

_REFERENCE_PIXELS = 512 * 512
_REFERENCE_STEPS = 30


def image_cost(pricing: Pricing, width: int, height: int, steps: int, num_images: int, lcm: bool = False) -> int:
    """cost = num_images * max(min_image_cost, image_rate * pixels/512² * steps/30), to 0.01;
    half that with lcm, as the hosted service charges."""
    per_image = pricing.image_rate * (width * height / _REFERENCE_PIXELS) * (steps / _REFERENCE_STEPS)
    factor = 0.5 if lcm else 1.0
    return to_milli(round(num_images * max(pricing.min_image_cost, per_image) * factor, 2))
