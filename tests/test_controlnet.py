"""ControlNet canny, depth and openpose: the annotators, the control map URL, the ready-made map
flag, and the errors for what is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daguerre.engine.runtime.local import LocalEngine
from daguerre.services.uploads import prepare_image
from tests.support.api import Api, register
from tests.support.images import decode, photo, png


@pytest.fixture
def controlnets(api: Api, controlnet_dirs: dict[str, Path], annotator_dirs: dict[str, Path]) -> Api:
    for name, path in controlnet_dirs.items():
        register(api, "controlnet", path, f"cn-{name}", controlnet=name)
    for name, path in annotator_dirs.items():
        assert register(api, "annotator", path, f"annotator-{name}").options["annotator"] == name
    return api


def test_canny_map_guides_the_image(controlnets: Api, engine: LocalEngine) -> None:
    api, base = controlnets, png(photo(seed=4))
    body = api.infer_with_image(base, controlnet="canny", seed=6)
    assert body["error_code"] == 0, body
    control = decode(api.fetch(body["control_image"]))
    assert control.shape == (128, 128, 3) and set(np.unique(control)) == {0, 255}
    guided = api.fetch(body["images"][0])
    assert guided != api.fetch(api.infer(seed=6)["images"][0])
    other_map = api.infer_with_image(png(photo(seed=9)), controlnet="canny", seed=6)
    assert api.fetch(other_map["images"][0]) != guided  # the map steers, not the ControlNet's presence alone
    loads = engine.cache.loads
    # image_strength has no effect with a ControlNet; the same seed reproduces.
    again = api.infer_with_image(base, controlnet="canny", seed=6, image_strength=0.1)
    assert api.fetch(again["images"][0]) == guided
    assert engine.cache.loads == loads
    assert "control_image" not in api.infer(seed=6)


def test_ready_made_map_is_used_as_sent(controlnets: Api) -> None:
    api, control_map = controlnets, png(photo(seed=8))
    body = api.infer_with_image(control_map, controlnet="depth", controlnet_preprocess="false", seed=1)
    assert body["error_code"] == 0, body
    assert api.fetch(body["control_image"]) == prepare_image(control_map, 128, 128, 10**8)


@pytest.mark.parametrize("name", ["depth", "openpose"])
def test_model_annotators(controlnets: Api, name: str) -> None:
    body = controlnets.infer_with_image(png(photo(seed=2)), controlnet=name, seed=1)
    assert body["error_code"] == 0, body
    control = decode(controlnets.fetch(body["control_image"]))
    assert control.shape == (128, 128, 3)
    if name == "depth":  # a grey depth map
        assert (control[..., 0] == control[..., 1]).all() and control.std() > 0
    else:  # the tiny pose network finds nobody: OpenPose draws an empty (black) map
        assert control.max() == 0


def test_what_is_missing_is_named_and_costs_nothing(api: Api, controlnet_dirs: dict[str, Path]) -> None:
    before = api.balance()
    base = png(photo())
    body = api.infer_with_image(base, controlnet="depth")
    assert body["error_code"] == 1 and "no depth ControlNet is installed for the sd15 family" in body["message"]
    register(api, "controlnet", controlnet_dirs["depth"], "cn-depth", controlnet="depth")
    body = api.infer_with_image(base, controlnet="depth")
    assert body["error_code"] == 1 and "no depth annotator is installed" in body["message"], body
    register(api, "controlnet", controlnet_dirs["canny"], "cn-canny-xl", family="sdxl", controlnet="canny")
    body = api.infer_with_image(base, controlnet="canny")
    assert body["error_code"] == 1 and "installed only for the sdxl family; model tiny is sd15" in body["message"]
    body = api.infer_with_image(base, controlnet="scribble")
    assert body == {
        "error_code": 1,
        "message": "invalid controlnet 'scribble': must be one of canny, depth, openpose",
        "field": "controlnet",
    }
    body = api.infer(controlnet="canny")
    assert body == {"error_code": 1, "message": "init_image_file is required", "field": "init_image_file"}
    assert api.balance() == before
