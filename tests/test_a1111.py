"""What A1111 users carry: Karras noise schedules and A1111's sampler names, and clip skip, per
request and per model, on both families."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from daguerre.engine.diffusers_classes import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from daguerre.engine.families import family
from daguerre.engine.jobs import ModelSpec, TextToImageJob, VaeSpec
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.services.catalog import Format, NewModel
from tests.support.api import Api, RecordingEngine, register
from tests.support.ldm_layout import vae_to_ldm

# Each Karras-capable scheduler and diffusers' own class with its settings, as A1111 names them.
KARRAS = {
    "DPMSolverMultistep": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "K_EULER": (EulerDiscreteScheduler, {}),
    "KLMS": (LMSDiscreteScheduler, {}),
}


@pytest.mark.parametrize("name", list(KARRAS))
def test_karras_sigmas_are_diffusers_own(name: str, tiny_sd15: Path) -> None:
    config = PNDMScheduler.load_config(tiny_sd15 / "scheduler")
    cls, overrides = KARRAS[name]
    theirs = cls.from_config(config, **overrides, use_karras_sigmas=True)
    ours, plain = Schedulers(config).get(name, karras=True), Schedulers(config).get(name)
    for scheduler in (theirs, ours, plain):
        scheduler.set_timesteps(12)
    assert torch.equal(ours.sigmas, theirs.sigmas)
    assert not torch.allclose(ours.sigmas, plain.sigmas)  # Karras spacing is another schedule


def test_karras_and_sampler_names_through_the_api(api: Api) -> None:
    def image(**fields: object) -> bytes:
        body = api.infer(seed=7, steps=6, **fields)
        assert body["error_code"] == 0, body
        return api.images(body)[0]

    plain = image(scheduler="DPMSolverMultistep")
    karras = image(scheduler="DPMSolverMultistep", karras="true")
    assert karras != plain
    assert image(scheduler="DPM++ 2M Karras") == karras
    assert image(scheduler="DPM++ 2M") == plain == image(scheduler="DPM++ 2M Karras", karras="false")
    assert image(scheduler="Euler a") == image(scheduler="K_EULER_ANCESTRAL")
    assert image(scheduler="LMS Karras") == image(scheduler="KLMS", karras="true") != image(scheduler="KLMS")
    before = api.balance()
    refused = api.infer(scheduler="DDIM", karras="true")
    assert refused["error_code"] == 1 and "karras" in refused["message"] and "DPMSolverMultistep" in refused["message"]
    assert api.balance() == before


def test_model_defaults_and_records(recorded_api: Api, recorder: RecordingEngine, tiny_sd15: Path) -> None:
    recorded_api.services.catalog.add(
        NewModel(
            path=tiny_sd15,
            format=Format.DIFFUSERS,
            id="a1111",
            title="A1111 habits",
            default_scheduler="K_EULER",
            options={"karras": True, "clip_skip": 2},
        )
    )
    body = recorded_api.post("/api/inference", model_id="a1111", prompt="p", num_images=1, **{"async": "true"})
    job = recorder.jobs[-1]
    assert isinstance(job, TextToImageJob) and (job.scheduler, job.karras, job.clip_skip) == ("K_EULER", True, 2)
    token_id = recorded_api.services.accounts.authenticate(recorded_api.token).id
    record = recorded_api.services.inference.inferences.get(body["inf_id"], token_id)
    assert (record.resolved["karras"], record.resolved["clip_skip"]) == (True, 2)
    # The request overrides the model; a model's Karras does not apply to a scheduler without it.
    recorded_api.post("/api/inference", model_id="a1111", prompt="p", num_images=1, karras="false", clip_skip=1)
    assert (recorder.jobs[-1].karras, recorder.jobs[-1].clip_skip) == (False, 1)
    recorded_api.post("/api/inference", model_id="a1111", prompt="p", num_images=1, scheduler="DDIM")
    assert (recorder.jobs[-1].scheduler, recorder.jobs[-1].karras) == ("DDIM", False)
    bad = recorded_api.post("/api/inference", model_id="a1111", prompt="p", clip_skip=13)
    assert bad["error_code"] == 1 and "clip_skip" in bad["message"] and "from 1 to 12" in bad["message"]


def test_clip_skip_two_is_the_penultimate_layer_through_the_final_norm(tiny_sd15: Path, tmp_path: Path) -> None:
    sd15 = family("sd15")
    pipe = sd15.load(
        ModelSpec("t", "1", str(tiny_sd15), "diffusers", "sd15"), torch.device("cpu"), torch.float32, tmp_path
    )
    ours = sd15.condition(pipe, "a red cat", "", clip_skip=2).positive
    ids = pipe.tokenizer("a red cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        model = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)
        expected = model.final_layer_norm(hidden)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert not torch.allclose(ours, sd15.condition(pipe, "a red cat", "").positive)


def test_clip_skip_changes_the_image_on_both_families(api: Api, tiny_sdxl: Path) -> None:
    register(api, "checkpoint", tiny_sdxl, "xl")

    def image(model_id: str, **fields: object) -> bytes:
        return api.images(api.infer(model_id=model_id, seed=3, steps=4, **fields))[0]

    assert image("tiny", clip_skip=2) != image("tiny")
    # SDXL reads the penultimate layer already: A1111's clip skip 2 changes nothing there, 3 does.
    assert image("xl", clip_skip=2) == image("xl")
    assert image("xl", clip_skip=3) != image("xl")


@pytest.fixture(scope="module")
def vae_files(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Another VAE for the tiny model (the same architecture, other random weights), as a diffusers
    folder and as an A1111 VAE file (the original layout without the checkpoint's prefix)."""
    folder = tmp_path_factory.mktemp("vaes")
    torch.manual_seed(11)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(tiny_sd15 / "vae"))
    vae.save_pretrained(folder / "vae-folder")
    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(vae.state_dict()).items()}
    save_file(state, str(folder / "kl-f8-anime.safetensors"))
    return {"folder": folder / "vae-folder", "file": folder / "kl-f8-anime.safetensors"}


def test_a_vae_per_model_replaces_the_checkpoint_own(
    api: Api, tiny_sd15: Path, vae_files: dict[str, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from daguerre.cli import app
    from daguerre.services.probing import UnsupportedModel, inspect_vae

    assert inspect_vae(vae_files["file"]).format == "single_file"
    with pytest.raises(UnsupportedModel, match="not a VAE"):
        inspect_vae(next((tiny_sd15 / "unet").glob("*.safetensors")))
    # `models add --vae FILE` registers the file as a VAE and the checkpoint with it.
    runner = CliRunner()
    data_dir = ["--data-dir", str(tmp_path)]
    added = runner.invoke(
        app, ["models", "add", str(tiny_sd15), "--title", "T", "--id", "t", "--vae", str(vae_files["file"]), *data_dir]
    )
    assert added.exit_code == 0 and "added vae kl-f8-anime" in added.output, added.output
    from daguerre.services.container import open_database
    from daguerre.settings import Settings

    catalog = open_database(Settings(data_dir=tmp_path)).catalog
    assert catalog.get("t").options["vae"] == "kl-f8-anime" and catalog.get("kl-f8-anime").kind.value == "vae"

    register(api, "vae", vae_files["file"], "vae-file")
    register(api, "vae", vae_files["folder"], "vae-folder")
    for model_id, vae_id in (("with-file", "vae-file"), ("with-folder", "vae-folder")):
        api.services.catalog.add(
            NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id=model_id, title=model_id, options={"vae": vae_id})
        )
    own, with_file, with_folder = (
        api.images(api.infer(model_id=m, seed=2))[0] for m in ("tiny", "with-file", "with-folder")
    )
    assert with_file != own and with_file == with_folder  # the same weights, read from either layout
    # The pipeline really holds the file's weights.
    sd15 = family("sd15")
    spec = ModelSpec(
        "t", "1", str(tiny_sd15), "diffusers", "sd15", vae=VaeSpec("v", "1", str(vae_files["file"]), "single_file")
    )
    pipe = sd15.load(spec, torch.device("cpu"), torch.float32, tmp_path)
    expected = AutoencoderKL.from_pretrained(vae_files["folder"]).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in pipe.vae.state_dict().items())


def test_models_add_takes_a1111_habits(tiny_sd15: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from daguerre.cli import app
    from daguerre.services.container import open_database
    from daguerre.settings import Settings

    command = ["models", "add", str(tiny_sd15), "--title", "Anime", "--id", "anime", "--clip-skip", "2"]
    added = CliRunner().invoke(app, [*command, "--default-scheduler", "DPM++ 2M Karras", "--data-dir", str(tmp_path)])
    assert added.exit_code == 0, added.output
    model = open_database(Settings(data_dir=tmp_path)).catalog.get("anime")
    assert (model.default_scheduler, model.options["karras"], model.options["clip_skip"]) == (
        "DPMSolverMultistep",
        True,
        2,
    )
    wrong = CliRunner().invoke(app, [*command, "--id", "x", "--clip-skip", "13", "--data-dir", str(tmp_path)])
    assert wrong.exit_code != 0
