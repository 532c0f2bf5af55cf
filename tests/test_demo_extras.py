"""`serve --demo` installs everything needed to try img2img, ControlNet, LoRA and LCM at once."""

from __future__ import annotations

from fastapi.testclient import TestClient

from daguerre.app import create_app
from daguerre.demo.install import DEMO_MODEL_ID, demo_token, install_demo
from daguerre.engine.runtime.local import LocalEngine
from daguerre.services.catalog import Kind
from daguerre.settings import Settings
from tests.support.images import photo, png


def test_demo_installs_every_extra_and_they_run(settings: Settings, engine: LocalEngine) -> None:
    with TestClient(create_app(settings, engine=engine), base_url="http://testserver") as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        install_demo(settings, services.catalog)
        install_demo(settings, services.catalog)  # idempotent
        catalog = services.catalog
        assert {m.id for m in catalog.list(Kind.LORA)} == {"demo-lora", "demo-lcm-lora"}
        assert sorted(m.options["controlnet"] for m in catalog.list(Kind.CONTROLNET)) == ["canny", "depth", "openpose"]
        assert sorted(m.options["annotator"] for m in catalog.list(Kind.ANNOTATOR)) == ["depth", "openpose"]
        token = demo_token(settings, services.accounts)
        fields = {
            "access_token": token,
            "model_id": DEMO_MODEL_ID,
            "prompt": "a cat <lora:demo-lora:0.5>",
            "width": 128,
            "height": 128,
            "num_images": 1,
            "controlnet": "depth",
            "lcm": "true",
            "steps": 2,
        }
        files = {"init_image_file": ("p.png", png(photo()), "image/png")}
        body = client.post("/api/inference", data=fields, files=files).json()
        assert body["error_code"] == 0 and body["control_image"], body
