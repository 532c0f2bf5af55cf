"""/api/models as clients of the hosted API read it, and where settings come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from daguerre.services.catalog import Format, NewModel
from daguerre.settings import Settings
from tests.support.api import Api


def test_models_entries_have_the_fields_hosted_clients_validate(recorded_api: Api, tiny_sd15: Path) -> None:
    recorded_api.services.catalog.add(
        NewModel(
            path=tiny_sd15,
            format=Format.DIFFUSERS,
            id="4zdwGOB",
            title="DreamShaper",
            tags=["anime"],
            civitai_model_id=4384,
            cover_img="https://img.example/c.png",
            link="https://civitai.com/models/4384",
        )
    )
    body = recorded_api.post("/api/models")
    assert body["error_code"] == 0 and body["loras"] == body["video_models"] == body["embeddings"] == []
    tiny, dream = body["models"]
    assert dream == {
        "id": "4zdwGOB",
        "title": "DreamShaper",
        "name": "DreamShaper",
        "cover_img": "https://img.example/c.png",
        "link": "https://civitai.com/models/4384",
        "tags": ["anime"],
        "type": "checkpoint",
        "base_model": "sd15",
        "versions": ["1"],
        "civitai_model_id": 4384,
        "sizes": {"min": 128, "max": 896, "multiple_of": 8, "default": [512, 768]},  # an addition
    }
    # Unset strings are "", never null; an unknown Civitai id is absent rather than null.
    assert tiny["cover_img"] == "" and tiny["link"] == "" and tiny["tags"] == []
    assert "civitai_model_id" not in tiny


def test_models_needs_a_valid_token(recorded_api: Api) -> None:
    for data in ({}, {"access_token": "nope"}):
        body = recorded_api.client.post("/api/models", data=data).json()
        assert body["error_code"] == 1 and "access_token" in body["message"]
    as_json = recorded_api.client.post("/api/models", json={"access_token": recorded_api.token}).json()
    assert as_json["error_code"] == 0


def test_settings_from_environment_then_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "daguerre.toml"
    config.write_text("max_num_images = 8\nport = 9000\n[pricing]\nimage_rate = 0.25\n")
    monkeypatch.setenv("DAGUERRE_CONFIG", str(config))
    monkeypatch.setenv("DAGUERRE_PORT", "9100")
    monkeypatch.setenv("DAGUERRE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("IMAGE_RATE", "99")  # unprefixed variables are not settings
    settings = Settings()
    assert settings.max_num_images == 8 and settings.pricing.image_rate == 0.25
    assert settings.port == 9100  # the environment wins over the file
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'd' / 'daguerre.db'}"
    monkeypatch.setenv("DAGUERRE_PRICING__IMAGE_RATE", "0.75")
    assert Settings().pricing.image_rate == 0.75


def test_max_num_images_setting_bounds_requests(recorded_api: Api) -> None:
    recorded_api.client.app.state.services.settings.max_num_images = 6  # type: ignore[attr-defined]
    assert recorded_api.post("/api/inference", model_id="tiny", prompt="p", num_images=6)["error_code"] == 0
    body = recorded_api.post("/api/inference", model_id="tiny", prompt="p", num_images=7)
    assert body["message"] == "invalid num_images 7: must be an integer from 1 to 6"
