"""Shared fixtures: tiny random-weight models of the real architectures, built once per session
(nothing is fetched from a hub), and an app per test on a fresh data dir sharing one engine so
the loaded models stay resident between tests, as they do in a server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from daguerre.app import create_app
from daguerre.demo.tiny_models import build_tiny_rrdbnet, build_tiny_sd15
from daguerre.engine.runtime.local import LocalEngine
from daguerre.services.catalog import Format, NewModel
from daguerre.settings import Settings
from tests.support.api import Api, RecordingEngine
from tests.support.single_file import export_single_file, skeleton_of


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd15(tmp_path_factory.mktemp("models") / "tiny-sd15")


@pytest.fixture(scope="session")
def tiny_single_file(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model as one A1111-layout .safetensors file, and its config skeleton."""
    folder = tmp_path_factory.mktemp("single")
    checkpoint = export_single_file(tiny_sd15, folder / "tiny-sd15.safetensors")
    return checkpoint, skeleton_of(tiny_sd15, folder / "skeleton")


@pytest.fixture(scope="session")
def tiny_upscalers(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Tiny random RRDBNet upscalers in Real-ESRGAN's release layout, by native scale."""
    folder = tmp_path_factory.mktemp("upscalers")
    return {scale: build_tiny_rrdbnet(folder / f"tiny-x{scale}.pth", scale) for scale in (2, 4)}


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LocalEngine:
    return LocalEngine(cache_dir=tmp_path_factory.mktemp("cache"), device="cpu", max_loaded_models=4)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def api(settings: Settings, engine: LocalEngine, tiny_sd15: Path) -> Iterator[Api]:
    with TestClient(create_app(settings, engine=engine), base_url="http://testserver") as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        services.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="tiny", title="Tiny"))
        token, _ = services.accounts.create_token(name="test", credits=100)
        yield Api(client, token)


@pytest.fixture
def recorder() -> RecordingEngine:
    return RecordingEngine()


@pytest.fixture
def recorded_api(settings: Settings, recorder: RecordingEngine, tiny_sd15: Path) -> Iterator[Api]:
    with TestClient(create_app(settings, engine=recorder), base_url="http://testserver") as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        services.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="tiny", title="Tiny"))
        token, _ = services.accounts.create_token(name="test", credits=1000)
        yield Api(client, token)


@pytest.fixture(scope="session")
def tiny_video_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Wan 2.1 text- and image-to-video pipelines and an AnimateDiff motion adapter
    that fits the tiny SD 1.5 UNet; about 2 s to build.
    """
    from daguerre.demo.tiny_models import build_tiny_motion_adapter, build_tiny_wan

    folder = tmp_path_factory.mktemp("video-models")
    return {
        "t2v": build_tiny_wan(folder / "tiny-wan-t2v"),
        "i2v": build_tiny_wan(folder / "tiny-wan-i2v", image_to_video=True),
        "motion_adapter": build_tiny_motion_adapter(folder / "tiny-motion-adapter"),
    }
