"""Upscalers in the catalog: `models add --kind upscaler`, the demo's tiny upscalers, the choice
among installed upscalers, and the tiling settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from daguerre.cli import app
from daguerre.demo.install import install_demo_upscalers
from daguerre.demo.tiny_models import build_tiny_rrdbnet
from daguerre.services.catalog import Format, Kind, ModelRecord, Version
from daguerre.services.container import open_database
from daguerre.services.probing import UnsupportedModel, inspect_model
from daguerre.services.upscale import pick_upscaler
from daguerre.settings import Settings, Upscaling
from tests.support.api import Api

runner = CliRunner()


def test_models_add_kind_upscaler_records_the_native_scale(tmp_path: Path, tiny_upscalers: dict[int, Path]) -> None:
    safetensors = build_tiny_rrdbnet(tmp_path / "x2.safetensors", 2, seed=1)
    for path, model_id in ((tiny_upscalers[4], "up4"), (safetensors, "up2")):
        result = runner.invoke(
            app,
            [
                "models",
                "add",
                str(path),
                "--kind",
                "upscaler",
                "--title",
                "Up",
                "--id",
                model_id,
                "--data-dir",
                str(tmp_path),
            ],
        )
        assert result.exit_code == 0, result.output
        assert f"added upscaler {model_id} version 1 (single_file, esrgan)" in " ".join(result.output.split())
    catalog = open_database(Settings(data_dir=tmp_path)).catalog
    assert {m.id: m.options["scale"] for m in catalog.list(Kind.UPSCALER)} == {"up4": 4, "up2": 2}
    assert catalog.list(Kind.CHECKPOINT) == []


def test_files_that_are_not_upscalers_are_refused(
    tmp_path: Path, tiny_sd15: Path, tiny_single_file: tuple[Path, Path]
) -> None:
    checkpoint, _ = tiny_single_file
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a model")
    for path, expected in (
        (checkpoint, "is not a model architecture spandrel recognises"),
        (garbage, "could not be read as a model"),
        (tiny_sd15, "expected an upscaler's .pth or .safetensors file"),
    ):
        with pytest.raises(UnsupportedModel, match=expected):
            inspect_model("upscaler", path)
    result = runner.invoke(
        app, ["models", "add", str(checkpoint), "--kind", "upscaler", "--title", "X", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1 and "not a model architecture spandrel recognises" in " ".join(result.output.split())


def _upscaler(model_id: str, scale: int) -> ModelRecord:
    return ModelRecord(
        id=model_id,
        kind=Kind.UPSCALER,
        title=model_id,
        family="esrgan",
        cover_img="",
        link="",
        tags=[],
        civitai_model_id=None,
        default_scale=None,
        default_scheduler=None,
        default_negative_prompt=None,
        options={"scale": scale},
        versions=[Version("1", f"/{model_id}.pth", Format.SINGLE_FILE, None)],
    )


def test_the_smallest_native_scale_reaching_the_request_wins_then_the_newest() -> None:
    x4, x2, newer_x2, x8 = _upscaler("x4", 4), _upscaler("x2", 2), _upscaler("x2b", 2), _upscaler("x8", 8)
    installed = [x4, x2, newer_x2, x8]  # oldest first, as the catalog lists them
    assert pick_upscaler(installed, 2) is newer_x2
    assert pick_upscaler(installed, 2.5) is x4
    assert pick_upscaler(installed, 4) is x4
    assert pick_upscaler([x2, x4], 3) is x4
    # None reaches 3: the largest runs repeatedly.
    assert pick_upscaler([x2, newer_x2], 3) is newer_x2
    assert pick_upscaler([], 2) is None


def test_demo_installs_x2_and_x4_once_and_they_serve_upscales(api: Api, settings: Settings) -> None:
    catalog = api.services.catalog
    first = install_demo_upscalers(settings, catalog)
    again = install_demo_upscalers(settings, catalog)
    assert [(m.id, m.options["scale"]) for m in first] == [("demo-esrgan-x2", 2), ("demo-esrgan-x4", 4)]
    assert again == first and len(catalog.list(Kind.UPSCALER)) == 2
    listed = api.post("/api/models")
    assert [m["id"] for m in listed["models"]] == ["tiny"]  # upscalers are not image models
    source = api.infer(seed=1)
    body = api.post("/api/upscale", inf_id=source["inf_id"], url=source["images"][0], scale="4")
    assert (body["error_code"], body["width"]) == (0, 512), body


def test_tiling_settings_are_checked() -> None:
    assert Upscaling(tile=64, tile_overlap=32).tile_overlap == 32
    with pytest.raises(ValidationError, match="tile_overlap"):
        Upscaling(tile=64, tile_overlap=33)
    with pytest.raises(ValidationError):
        Upscaling(tile=8)
