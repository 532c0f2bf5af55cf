"""`serve --demo` installs everything needed to try every feature at once, on an image model built
for speed on a CPU; each feature runs on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from daguerre.app import create_app
from daguerre.demo.install import DEMO_MODEL_ID, demo_token, install_demo, pending_demo_steps
from daguerre.engine.runtime.local import LocalEngine
from daguerre.services.catalog import Kind
from daguerre.services.container import open_database
from daguerre.services.probing import inspect_model
from daguerre.settings import Settings
from tests.support.api import Api
from tests.support.images import photo, png


@pytest.fixture(scope="module")
def demo_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A data dir with the demo installed once for the module (installing twice changes nothing)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("demo"))
    database = open_database(settings)
    install_demo(settings, database.catalog)
    install_demo(settings, database.catalog)
    database.engine.dispose()
    return settings


@pytest.fixture
def demo(demo_settings: Settings, engine: LocalEngine) -> Iterator[Api]:
    with TestClient(create_app(demo_settings, engine=engine), base_url="http://testserver") as client:
        yield Api(client, demo_token(demo_settings, client.app.state.services.accounts), DEMO_MODEL_ID)  # type: ignore[attr-defined]


def _config(folder: Path) -> dict[str, object]:
    config: dict[str, object] = json.loads((folder / "config.json").read_text())
    return config


def test_the_demo_image_model_is_the_fast_topology(demo_settings: Settings) -> None:
    database = open_database(demo_settings)
    model = database.catalog.get(DEMO_MODEL_ID)
    folder = Path(model.latest.path)
    unet, vae = _config(folder / "unet"), _config(folder / "vae")
    # Attention only at the lowest resolution (the last level and the mid block), one layer per
    # block: at 512x768 the top levels' self-attention is what made the exact topology slow.
    assert unet["down_block_types"] == ["DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"]
    assert unet["up_block_types"] == ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"]
    assert unet["layers_per_block"] == 1
    # Four VAE levels keep the scale factor at 8, so sizes behave as in SD 1.5; no attention over
    # the whole latent in its mid block.
    assert len(vae["block_out_channels"]) == 4 and vae["mid_block_add_attention"] is False  # type: ignore[arg-type]
    assert _config(folder.parent / "demo-motion-adapter")["motion_layers_per_block"] == 1
    assert "random weights" in model.title and "draws noise" in model.title and "draws-noise" in model.tags
    assert pending_demo_steps(database.catalog) == []
    database.engine.dispose()


def test_the_demo_records_what_inspecting_its_files_finds(demo_settings: Settings) -> None:
    """The upscalers are registered without inspecting them (spandrel's import is slow)."""
    database = open_database(demo_settings)
    for model in database.catalog.list(Kind.UPSCALER):
        info = inspect_model("upscaler", Path(model.latest.path))
        assert (model.family, model.options, model.latest.format) == (info.family, info.options, info.format)
    database.engine.dispose()


def test_demo_installs_every_extra_and_lora_controlnet_and_lcm_run(demo: Api) -> None:
    catalog = demo.services.catalog
    assert {m.id for m in catalog.list(Kind.LORA)} == {"demo-lora", "demo-lcm-lora"}
    assert sorted(m.options["controlnet"] for m in catalog.list(Kind.CONTROLNET)) == ["canny", "depth", "openpose"]
    assert sorted(m.options["annotator"] for m in catalog.list(Kind.ANNOTATOR)) == ["depth", "openpose"]
    body = demo.infer_with_image(png(photo()), prompt="a cat <lora:demo-lora:0.5>", controlnet="depth", lcm="true")
    assert body["error_code"] == 0 and body["control_image"], body


@pytest.mark.parametrize("controlnet", ["canny", "openpose"])
def test_the_other_controlnets_run_on_the_demo(demo: Api, controlnet: str) -> None:
    body = demo.infer_with_image(png(photo()), controlnet=controlnet)
    assert body["error_code"] == 0 and body["control_image"], body


def test_img2img_and_the_lora_change_the_demo_image(demo: Api) -> None:
    plain = demo.infer(seed=3)
    with_lora = demo.infer(seed=3, lora="demo-lora", lora_scale="1")
    img2img = demo.infer_with_image(png(photo()), seed=3, image_strength=0.5)
    assert plain["error_code"] == with_lora["error_code"] == img2img["error_code"] == 0, (with_lora, img2img)
    images = [demo.client.get(b["images"][0]).content for b in (plain, with_lora, img2img)]
    assert len(set(images)) == 3


def test_upscale_and_hires_fix_run_on_the_demo(demo: Api) -> None:
    source = demo.infer(seed=1)
    esrgan = demo.post("/api/upscale", inf_id=source["inf_id"], url=source["images"][0], scale="2")
    hires = demo.post("/api/upscale", inf_id=source["inf_id"], url=source["images"][0], type="hires_fix")
    assert (esrgan["error_code"], esrgan["width"], hires["error_code"], hires["width"]) == (0, 256, 0, 256), (
        esrgan,
        hires,
    )


def test_the_demo_animates_with_its_motion_adapter(demo: Api) -> None:
    body = demo.post("/api/video", model_id=DEMO_MODEL_ID, prompt="a fox", num_frames=4, steps=2, seed=1)
    assert body["error_code"] == 0 and body["num_frames"] == 4, body
