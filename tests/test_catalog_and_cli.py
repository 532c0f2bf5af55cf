"""The operator's CLI and the catalog behind it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from typer.testing import CliRunner

from daguerre.cli import app
from daguerre.engine.families import family
from daguerre.services.container import open_database
from daguerre.services.probing import UnsupportedModel, inspect_checkpoint
from daguerre.settings import Settings

runner = CliRunner()


def cli(data_dir: Path, *args: str) -> str:
    result = runner.invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def test_tokens_and_credits(tmp_path: Path) -> None:
    output = cli(tmp_path, "tokens", "create", "--credits", "12.5", "--name", "alice")
    token = output.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    listing = cli(tmp_path, "tokens", "list")
    assert token[:8] in listing and "alice" in listing and "12.5" in listing and token not in listing
    assert "now has 20 credits" in cli(tmp_path, "credits", "add", token, "7.5")
    assert "now has 25 credits" in cli(tmp_path, "credits", "add", token[:6], "5")
    accounts = open_database(Settings(data_dir=tmp_path)).accounts
    assert accounts.authenticate(token).balance == 25
    failed = runner.invoke(app, ["credits", "add", "nosuchtoken", "1", "--data-dir", str(tmp_path)])
    assert failed.exit_code == 1 and "no token matches" in failed.output


def test_models_add_list_versions_and_remove(tmp_path: Path, tiny_sd15: Path, tiny_single_file) -> None:
    checkpoint, skeleton = tiny_single_file
    output = cli(
        tmp_path,
        "models",
        "add",
        str(tiny_sd15),
        "--title",
        "Tiny",
        "--tags",
        "anime",
        "--tags",
        "test",
        "--default-scale",
        "6",
        "--default-scheduler",
        "K_EULER",
        "--civitai-model-id",
        "4384",
    )
    model_id = re.search(r"added checkpoint (\w+) version 1", output).group(1)
    assert re.fullmatch(r"[A-Za-z0-9]{7}", model_id)
    cli(
        tmp_path,
        "models",
        "add",
        str(checkpoint),
        "--title",
        "Tiny",
        "--id",
        model_id,
        "--version",
        "v2",
        "--config",
        str(skeleton),
    )
    catalog = open_database(Settings(data_dir=tmp_path)).catalog
    record = catalog.get(model_id)
    assert [v.version for v in record.versions] == ["1", "v2"]
    assert record.latest.format == "single_file" and record.latest.config_path == str(skeleton.resolve())
    assert (record.tags, record.default_scale, record.default_scheduler, record.civitai_model_id) == (
        ["anime", "test"],
        6.0,
        "K_EULER",
        4384,
    )
    assert model_id in cli(tmp_path, "models", "list")
    duplicate = runner.invoke(
        app,
        [
            "models",
            "add",
            str(tiny_sd15),
            "--title",
            "T",
            "--id",
            model_id,
            "--version",
            "v2",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert duplicate.exit_code == 1 and "already has a version 'v2'" in duplicate.output
    cli(tmp_path, "models", "remove", model_id)
    assert catalog.list() == []


def test_models_add_rejects_bad_options_and_files(tmp_path: Path, tiny_sd15: Path) -> None:
    bad_scheduler = runner.invoke(
        app,
        ["models", "add", str(tiny_sd15), "--title", "T", "--default-scheduler", "Heun", "--data-dir", str(tmp_path)],
    )
    assert bad_scheduler.exit_code == 1 and "DPMSolverMultistep" in bad_scheduler.output
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    wrong = runner.invoke(app, ["models", "add", str(text_file), "--title", "T", "--data-dir", str(tmp_path)])
    assert wrong.exit_code == 1 and ".safetensors" in wrong.output


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", "not a whole SDXL"),
        ("conditioner.embedders.0.model.token_embedding.weight", "SDXL refiner"),
        ("cond_stage_model.model.token_embedding.weight", "SD 2.x"),
        ("some.other.weight", "not an SD 1.x or SDXL checkpoint"),
    ],
)
def test_inspection_names_what_a_foreign_checkpoint_is(tmp_path: Path, key: str, message: str) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({key: torch.zeros(1)}, str(path))
    with pytest.raises(UnsupportedModel, match=message):
        inspect_checkpoint(path)


def test_single_file_and_ckpt_are_recognised(tiny_single_file, tmp_path: Path) -> None:
    checkpoint, _ = tiny_single_file
    assert inspect_checkpoint(checkpoint).format == "single_file"
    from safetensors.torch import load_file

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(checkpoint))}, ckpt)
    assert inspect_checkpoint(ckpt).format == "single_file"


def test_shipped_sd15_skeleton_has_the_real_topology(tmp_path: Path, tiny_sd15: Path) -> None:
    """The real SD 1.5 UNet built from the shipped config (on the meta device: no memory) has the
    same parameter names as the tiny model, whose single-file round trip is tested end to end."""
    skeleton = family("sd15").skeleton(tmp_path)
    with torch.device("meta"):
        real = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(skeleton / "unet"))
        real_vae = AutoencoderKL.from_config(AutoencoderKL.load_config(skeleton / "vae"))
    tiny = UNet2DConditionModel.from_pretrained(tiny_sd15 / "unet")
    assert set(real.state_dict()) == set(tiny.state_dict())
    assert set(real_vae.state_dict()) == set(AutoencoderKL.from_pretrained(tiny_sd15 / "vae").state_dict())
    assert real.config.cross_attention_dim == 768 and list(real.config.block_out_channels) == [320, 640, 1280, 1280]
    assert sum(p.numel() for p in real.parameters()) == 859_520_964
    assert (skeleton / "tokenizer" / "vocab.json").exists()


def test_serve_demo_installs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daguerre.demo.install import DEMO_MODEL_ID, demo_token, install_demo

    settings = Settings(data_dir=tmp_path)
    database = open_database(settings)
    install_demo(settings, database.catalog)
    install_demo(settings, database.catalog)
    demo = database.catalog.get(DEMO_MODEL_ID)
    assert len(demo.versions) == 1 and "random weights" in demo.title
    token = demo_token(settings, database.accounts)
    assert demo_token(settings, database.accounts) == token
    assert database.accounts.authenticate(token).balance > 0
