"""`daguerre models add` for LoRAs, ControlNets and annotators, and the demo's extras."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from daguerre.cli import app
from daguerre.services.catalog import Kind
from daguerre.services.container import open_database
from daguerre.settings import Settings


def add(data_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["models", "add", *args, "--data-dir", str(data_dir)])
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def test_models_add_kinds(
    tmp_path: Path, lora_files: dict[str, Path], controlnet_dirs: dict[str, Path], annotator_dirs: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    assert add(data, str(lora_files["a-kohya"]), "--kind", "lora", "--title", "A", "--id", "a")[0] == 0
    assert add(data, str(lora_files["lcm"]), "--kind", "lora", "--lcm", "--title", "L", "--id", "l")[0] == 0
    code, out = add(
        data, str(controlnet_dirs["depth"]), "--kind", "controlnet", "--controlnet", "depth", "--title", "D"
    )
    assert code == 0, out
    assert add(data, str(annotator_dirs["openpose"]), "--kind", "annotator", "--title", "P", "--id", "p")[0] == 0
    code, out = add(data, str(controlnet_dirs["depth"]), "--kind", "controlnet", "--title", "D")
    assert code == 1 and "--controlnet canny, depth or openpose" in out
    code, out = add(data, str(lora_files["a"]), "--kind", "controlnet", "--controlnet", "canny", "--title", "X")
    assert code == 1 and "diffusers ControlNet folder" in out
    code, out = add(data, str(controlnet_dirs["canny"]), "--kind", "lora", "--title", "X")
    assert code == 1 and "LoRA" in out
    catalog = open_database(Settings(data_dir=data)).catalog
    assert catalog.get("a").options == {"layout": "kohya"}
    assert catalog.get("l").options == {"layout": "diffusers", "lcm": True}
    assert [m.options for m in catalog.list(Kind.CONTROLNET)] == [{"controlnet": "depth"}]
    assert catalog.get("p", Kind.ANNOTATOR).options == {"annotator": "openpose"}
