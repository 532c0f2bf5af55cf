"""SDXL beyond the shared engine behaviours (tests/test_engine_sdxl.py): single-file checkpoints in
the layout SDXL, Pony and Illustrious are published in, prompt encoding against diffusers' own,
the family's sizes and prices, and ControlNet, LCM and hires fix on SDXL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from daguerre.demo.tiny_models import build_tiny_controlnet
from daguerre.engine.diffusers_classes import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from daguerre.engine.families import family
from daguerre.engine.jobs import ModelSpec, TextToImageJob
from daguerre.services.catalog import Format, NewModel
from daguerre.services.probing import inspect_checkpoint
from daguerre.settings import Settings
from tests.support.api import Api, RecordingEngine, register, serve
from tests.support.engine_behaviour import assert_same_but_for_batch_rounding
from tests.support.images import decode, photo, png
from tests.support.single_file import export_sdxl_single_file, skeleton_of


@pytest.fixture(scope="module")
def sdxl_files(tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sdxl-single")
    return {
        suffix: export_sdxl_single_file(tiny_sdxl, folder / f"tiny-xl{suffix}") for suffix in (".safetensors", ".ckpt")
    }


@pytest.fixture
def xl(api: Api, tiny_sdxl: Path) -> Api:
    register(api, "checkpoint", tiny_sdxl, "xl")
    return api.for_model("xl")


def test_sdxl_single_files_are_recognised_and_render_as_the_folder_does(
    xl: Api, sdxl_files: dict[str, Path], tiny_sdxl: Path, tmp_path: Path
) -> None:
    assert inspect_checkpoint(tiny_sdxl).family == "sdxl"
    skeleton = skeleton_of(tiny_sdxl, tmp_path / "skeleton")
    (folder_image,) = xl.images(xl.infer(seed=4))
    for suffix, path in sdxl_files.items():
        info = inspect_checkpoint(path)
        assert (info.format, info.family) == ("single_file", "sdxl"), suffix
        model_id = "xl-file" + suffix.replace(".", "-")
        # The tiny architecture's skeleton, as an operator gives --config for a custom one (the
        # shipped SDXL skeleton is the real architecture: test below).
        xl.services.catalog.add(
            NewModel(
                path=path, format=Format.SINGLE_FILE, id=model_id, title=model_id, family="sdxl", config_path=skeleton
            )
        )
        # Loaded offline through from_single_file: the same weights, the same image (within float
        # rounding: the text projection comes back from OpenCLIP's transposed matrix as a
        # non-contiguous tensor, whose matmul rounds differently in the last bit).
        (image,) = xl.images(xl.infer(model_id=model_id, seed=4))
        assert_same_but_for_batch_rounding(image, folder_image)


def test_shipped_sdxl_skeleton_is_the_real_architecture(tmp_path: Path) -> None:
    """Built from the shipped configs on the meta device (no memory), each part has SDXL base's
    published parameter count; the tokenizers are derived offline."""
    skeleton = family("sdxl").skeleton(tmp_path)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(skeleton / "unet"))
        clip_l = CLIPTextModel(CLIPTextConfig.from_pretrained(skeleton / "text_encoder"))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(skeleton / "text_encoder_2"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(skeleton / "vae"))
    counts = [sum(p.numel() for p in model.parameters()) for model in (unet, clip_l, clip_g, vae)]
    assert counts == [2_567_463_684, 123_060_480, 694_659_840, 83_653_863]
    assert CLIPTokenizer.from_pretrained(skeleton / "tokenizer_2").pad_token == "!"
    assert CLIPTokenizer.from_pretrained(skeleton / "tokenizer").pad_token == "<|endoftext|>"


def test_conditioning_equals_diffusers_own_encoding_for_plain_prompts(tiny_sdxl: Path, tmp_path: Path) -> None:
    sdxl = family("sdxl")
    pipe = sdxl.load(
        ModelSpec("xl", "1", str(tiny_sdxl), "diffusers", "sdxl"), torch.device("cpu"), torch.float32, tmp_path
    )
    assert isinstance(pipe, StableDiffusionXLPipeline)
    for negative in ("", "blurry, lowres"):
        ours = sdxl.condition(pipe, "a red cat on a mat", negative)
        theirs = pipe.encode_prompt("a red cat on a mat", negative_prompt=negative or None, device=torch.device("cpu"))
        for mine, reference in zip(
            (ours.positive, ours.negative, ours.pooled, ours.negative_pooled), theirs, strict=True
        ):
            assert mine is not None and torch.allclose(mine, reference, atol=1e-6)
    # Past 77 tokens the prompt goes on in further chunks, through both encoders.
    long = sdxl.condition(pipe, " ".join(["cat"] * 100), "")  # 100 tokens: two chunks
    assert long.positive.shape[1] == 2 * 77 and long.positive.shape[2] == pipe.unet.config.cross_attention_dim


def test_sizes_and_defaults_follow_the_family(tiny_sdxl: Path, settings: Settings, recorder: RecordingEngine) -> None:
    with serve(settings, recorder, tiny_sdxl, credits=1000) as recorded:
        register(recorded, "checkpoint", tiny_sdxl, "xl")
        register(recorded, "checkpoint", tiny_sdxl, "xl-small", default_size=[768, 512])
        body = {"model_id": "xl", "prompt": "p", "num_images": 1}
        assert recorded.post("/api/inference", **body)["error_code"] == 0
        job = recorder.jobs[-1]
        assert isinstance(job, TextToImageJob) and (job.width, job.height) == (1024, 1024)
        recorded.post("/api/inference", **{**body, "model_id": "xl-small"})
        assert (recorder.jobs[-1].width, recorder.jobs[-1].height) == (768, 512)
        assert recorded.post("/api/inference", **body, width=1536, height=640)["error_code"] == 0
        refused = recorded.post("/api/inference", **body, width=1544)
        assert refused["error_code"] == 1 and "from 128 to 1536" in refused["message"], refused
        too_big = recorded.post("/api/inference", **{**body, "model_id": "tiny"}, width=1024)
        assert too_big["error_code"] == 1
        assert "must be a multiple of 8 from 128 to 896 for model tiny" in too_big["message"], too_big


def test_price_is_relative_to_the_family_native_size(recorded_api: Api, tiny_sdxl: Path) -> None:
    register(recorded_api, "checkpoint", tiny_sdxl, "xl")
    common = {"prompt": "p", "num_images": 1, "steps": 30}
    sd15 = recorded_api.post("/api/inference", model_id="tiny", width=512, height=512, **common)
    xl = recorded_api.post("/api/inference", model_id="xl", width=1024, height=1024, **common)
    xl_small = recorded_api.post("/api/inference", model_id="xl", width=512, height=512, **common)
    assert sd15["credit_cost"] == xl["credit_cost"] > xl_small["credit_cost"]


def test_the_balance_check_before_an_upload_prices_as_the_charge_does(recorded_api: Api, tiny_sdxl: Path) -> None:
    # One image at SDXL's default 1024x1024 and 30 steps costs 0.5. Priced as SD 1.5 at the contract's 512x768 it
    # would be 0.75, and this balance refused before its upload was read.
    register(recorded_api, "checkpoint", tiny_sdxl, "xl")
    token, _ = recorded_api.services.accounts.create_token(credits=0.6)
    response = recorded_api.client.post(
        "/api/inference",
        data={"access_token": token, "model_id": "xl", "prompt": "p", "num_images": "1"},
        files={"init_image_file": ("a.png", png(photo(64, 64)), "image/png")},
    ).json()
    assert response["error_code"] == 0 and response["credit_cost"] == 0.5, response


def test_controlnet_lcm_and_hires_fix_run_on_sdxl(
    xl: Api, tiny_sdxl: Path, sdxl_lora_files: dict[str, Path], tmp_path: Path
) -> None:
    controlnet = build_tiny_controlnet(tiny_sdxl, tmp_path / "cn-xl")
    register(xl, "controlnet", controlnet, "cn-xl", controlnet="canny")
    base = png(photo(seed=2))
    guided = xl.infer_with_image(base, controlnet="canny", seed=3)
    assert guided["error_code"] == 0, guided
    other = xl.infer_with_image(png(photo(seed=5)), controlnet="canny", seed=3)
    assert xl.images(guided) != xl.images(other)  # the control map steers the image
    register(xl, "lora", sdxl_lora_files["a"], "lcm-xl", lcm=True)
    fast = xl.infer(lcm="true", seed=3)
    assert fast["error_code"] == 0 and decode(xl.images(fast)[0]).shape == (128, 128, 3), fast
    hires = xl.post("/api/upscale", inf_id=fast["inf_id"], url=fast["images"][0], type="hires_fix", strength="0.5")
    assert hires["error_code"] == 0, hires


def test_models_add_recognises_sdxl_files_and_takes_a_default_size(sdxl_files: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from daguerre.cli import app
    from daguerre.services.container import open_database

    runner = CliRunner()
    common = ["--title", "Pony-like", "--data-dir", str(tmp_path)]
    added = runner.invoke(
        app, ["models", "add", str(sdxl_files[".safetensors"]), "--id", "pony", "--default-size", "832x1216", *common]
    )
    assert added.exit_code == 0 and "single_file, sdxl" in added.output, added.output
    model = open_database(Settings(data_dir=tmp_path)).catalog.get("pony")
    assert (model.family, model.options["default_size"]) == ("sdxl", [832, 1216])
    odd = runner.invoke(app, ["models", "add", str(sdxl_files[".ckpt"]), "--default-size", "830x1216", *common])
    assert odd.exit_code == 1 and "multiples of 8" in odd.output
