"""Engine failures tell the client what failed and give an error id the server log holds with the
traceback, nothing more; invalid (NaN/inf) results fail and are refunded instead of coming back
as black images; a missing optional package is named for the operator."""

from __future__ import annotations

import io
import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from daguerre.engine.jobs import AuxiliarySpec, ControlNetJob, ModelSpec, VideoJob
from daguerre.engine.prompts.encoding import _restore_mean, encode_prompt_pair
from daguerre.engine.runtime.local import LocalEngine
from daguerre.errors import GenerationFailed
from daguerre.services.catalog import Format, NewModel
from daguerre.settings import DEFAULT_NEGATIVE_PROMPT
from tests.support.api import Api

ERROR_ID = re.compile(r"error id ([0-9a-f]{8})")


def test_a_weighted_prompt_gives_a_real_image(api: Api) -> None:
    # The demo's text encoder centres its output (mean ~1e-8): A1111's mean restoration divided
    # by that and overflowed to inf, which rendered black and was reported as a success.
    body = api.infer(seed=4, prompt="a harbour at dawn, (oil painting:1.2)", use_default_neg="true")
    assert body["error_code"] == 0, body
    pixels = np.asarray(Image.open(io.BytesIO(api.fetch(body["images"][0]))), dtype=np.float32)
    assert pixels.std() > 1.0 and pixels.max() > 0


def test_weighted_embeddings_stay_finite_and_weighted(tiny_sd15: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, local_files_only=True)
    args = (pipe.tokenizer, pipe.text_encoder, torch.device("cpu"))
    weighted, negative = encode_prompt_pair("a harbour at dawn, (oil painting:1.2)", DEFAULT_NEGATIVE_PROMPT, *args)
    plain, _ = encode_prompt_pair("a harbour at dawn, oil painting", "", *args)
    assert torch.isfinite(weighted).all() and torch.isfinite(negative).all()
    assert not torch.equal(weighted, plain)


def test_mean_restoration_still_applies_where_the_mean_is_sound() -> None:
    hidden = torch.randn(1, 77, 32) + 0.5  # mean well away from zero, as A1111 assumes
    weighted = hidden * torch.linspace(0.8, 1.4, 77).view(1, 77, 1)
    restored = _restore_mean(hidden, weighted)
    assert torch.allclose(restored.mean(), hidden.mean(), atol=1e-5)
    centred = hidden - hidden.mean()  # mean ~0: the ratio would be noise, so no rescaling
    assert torch.equal(_restore_mean(centred, centred * 1.2), centred * 1.2)


@pytest.fixture(scope="module")
def nan_model(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a VAE decoder that outputs NaN, as a half-precision VAE overflowing does."""
    folder = shutil.copytree(tiny_sd15, tmp_path_factory.mktemp("broken") / "nan-vae")
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["decoder.conv_out.bias"] = torch.full_like(state["decoder.conv_out.bias"], float("nan"))
    save_file(state, str(weights))
    return folder


def test_a_model_producing_nan_fails_the_job_and_refunds_it(api: Api, nan_model: Path) -> None:
    api.services.catalog.add(NewModel(path=nan_model, format=Format.DIFFUSERS, id="nan", title="NaN"))
    before = api.balance()
    body = api.infer(model_id="nan", seed=1)
    assert body["error_code"] == 1
    assert "denoising and decoding the image: the model produced invalid (NaN or infinite) values" in body["message"]
    assert "float32" in body["message"] and ERROR_ID.search(body["message"])
    assert api.balance() == before


def test_a_failure_names_the_stage_and_logs_the_traceback_under_its_id(
    api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ghost = tmp_path / "secret-server-folder" / "ghost"
    ghost.mkdir(parents=True)
    (ghost / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    api.services.catalog.add(NewModel(path=ghost, format=Format.DIFFUSERS, id="ghost", title="Ghost"))
    before = api.balance()
    with caplog.at_level(logging.ERROR):
        body = api.infer(model_id="ghost")
    assert body["error_code"] == 1
    message = body["message"]
    match = re.fullmatch(
        r"generation failed while loading model ghost \(version 1\); error id ([0-9a-f]{8}): "
        r"the server log has the details",
        message,
    )
    assert match, message
    assert "secret-server-folder" not in message
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log, under the id
    assert api.balance() == before


def test_an_error_outside_any_named_stage_still_gets_an_id(engine: LocalEngine, tiny_sd15: Path) -> None:
    # An openpose ControlNet job without its annotator: a ValueError (the services never send one).
    with pytest.raises(GenerationFailed) as failure:
        engine.run(_controlnet_job(tiny_sd15, annotator=None))
    assert failure.value.error_id is not None
    assert failure.value.message == (
        f"generation failed while running the job; error id {failure.value.error_id}: the server log has the details"
    )


def _controlnet_job(tiny_sd15: Path, annotator: AuxiliarySpec | None) -> ControlNetJob:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    return ControlNetJob(
        ModelSpec("tiny", "1", str(tiny_sd15), "diffusers", "sd15"),
        "a cat",
        "",
        64,
        64,
        1,
        7.0,
        "K_EULER",
        (1,),
        control_image=buffer.getvalue(),
        controlnet=AuxiliarySpec("pose", "1", str(tiny_sd15), "openpose"),
        annotator=annotator,
    )


def test_a_missing_optional_package_is_named_for_the_operator(
    engine: LocalEngine, tiny_sd15: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "controlnet_aux.open_pose", None)  # as if controlnet-aux were absent
    job = _controlnet_job(tiny_sd15, AuxiliarySpec("openpose", "1", str(tmp_path), "openpose"))
    with pytest.raises(GenerationFailed) as failure:
        engine.run(job)
    message = failure.value.message
    assert message.startswith("generation failed while loading annotator openpose (version 1): ")
    assert "'controlnet-aux'" in message and "pip install controlnet-aux" in message

    monkeypatch.setitem(sys.modules, "ftfy", None)
    video = VideoJob(
        ModelSpec("wan", "1", str(tmp_path), "diffusers", "wan2.1"), "wan", "a cat", "", 64, 64, 5, 8, 1, 5.0, 1
    )
    with pytest.raises(GenerationFailed) as failure:
        engine.run(video)
    assert "loading video model wan (version 1)" in failure.value.message
    assert "pip install ftfy" in failure.value.message and "not defined" not in failure.value.message
