"""img2img's request checks; its rendering (the strength ends, reproducibility, the base image's
effect) is in tests/support/engine_behaviour.py, which every family inherits."""

from __future__ import annotations

from tests.support.api import Api
from tests.support.images import photo, png


def test_image_strength_out_of_range(api: Api) -> None:
    body = api.infer_with_image(png(photo()), image_strength=1.5)
    assert body == {
        "error_code": 1,
        "message": "invalid image_strength '1.5': must be a number from 0 to 1",
        "field": "image_strength",
    }
