"""Textual-inversion embeddings as A1111 users bring them: .pt and .safetensors files, SD 1.5 and
SDXL, named in a prompt as a word or as <embedding:name>."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from daguerre.engine.families import family
from daguerre.engine.jobs import EmbeddingSpec, ModelSpec
from daguerre.engine.loading.embeddings import LoadedEmbedding, load_embeddings, read_embedding
from daguerre.services.probing import UnsupportedModel, inspect_embedding
from tests.support.api import Api, register

CLIP_L, CLIP_G = 32, 48  # the tiny text encoders' widths (daguerre.demo.tiny_models)


@pytest.fixture(scope="module")
def embedding_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("embeddings")
    generator = torch.Generator().manual_seed(5)
    files = {
        # A1111's own format: two vectors under string_to_param.
        "pt": folder / "EasyNeg.pt",
        # Civitai's SD 1.5 safetensors: emb_params.
        "safetensors": folder / "badhands.safetensors",
        "sdxl": folder / "negxl.safetensors",
    }
    torch.save({"string_to_param": {"*": torch.randn(2, CLIP_L, generator=generator)}, "name": "EasyNeg"}, files["pt"])
    save_file({"emb_params": torch.randn(1, CLIP_L, generator=generator)}, str(files["safetensors"]))
    save_file(
        {"clip_l": torch.randn(3, CLIP_L, generator=generator), "clip_g": torch.randn(3, CLIP_G, generator=generator)},
        str(files["sdxl"]),
    )
    return files


def test_files_are_recognised_by_family_and_vector_count(embedding_files: dict[str, Path], tmp_path: Path) -> None:
    found = {name: inspect_embedding(path) for name, path in embedding_files.items()}
    assert [(info.family, info.options["vectors"]) for info in found.values()] == [
        ("sd15", 2),
        ("sd15", 1),
        ("sdxl", 3),
    ]
    other = tmp_path / "two.safetensors"
    save_file({"a": torch.zeros(1, 4), "b": torch.zeros(1, 4)}, str(other))
    with pytest.raises(UnsupportedModel, match="not a textual-inversion embedding"):
        inspect_embedding(other)


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_the_vectors_land_on_their_tokens_and_nothing_else_changes(
    name: str, embedding_files: dict[str, Path], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    path = embedding_files["pt" if name == "sd15" else "sdxl"]
    model = request.getfixturevalue(f"tiny_{name}")
    models = family(name)
    pipe = models.load(ModelSpec("m", "1", str(model), "diffusers", name), torch.device("cpu"), torch.float32, tmp_path)
    before = models.condition(pipe, "a cat, blurry", "")
    load_embeddings(pipe, {}, (EmbeddingSpec("EasyNeg", "1", str(path)),))
    assert torch.equal(models.condition(pipe, "a cat, blurry", "").positive, before.positive)
    state = torch.load(path, weights_only=True) if path.suffix == ".pt" else None
    targets = [("tokenizer", "text_encoder", "clip_l"), ("tokenizer_2", "text_encoder_2", "clip_g")]
    from safetensors.torch import load_file

    vectors = {"clip_l": state["string_to_param"]["*"]} if state else load_file(str(path))
    for tokenizer_name, encoder_name, key in targets:
        if key not in vectors:
            continue
        tokenizer, encoder = getattr(pipe, tokenizer_name), getattr(pipe, encoder_name)
        count = vectors[key].shape[0]
        ids = tokenizer.convert_tokens_to_ids(["easyneg", *(f"easyneg_{i}" for i in range(1, count))])
        assert torch.equal(encoder.get_input_embeddings().weight[ids], vectors[key])
    named = models.condition(
        pipe, "a cat, " + " ".join(["easyneg", *(f"easyneg_{i}" for i in range(1, 3))][:count]), ""
    )
    assert not torch.equal(named.positive, before.positive)


def test_a_new_version_replaces_the_tokens_of_the_one_loaded(
    embedding_files: dict[str, Path], tiny_sd15: Path, tmp_path: Path
) -> None:
    models = family("sd15")
    pipe = models.load(
        ModelSpec("m", "1", str(tiny_sd15), "diffusers", "sd15"), torch.device("cpu"), torch.float32, tmp_path
    )
    plain = models.condition(pipe, "a cat, blurry", "")
    loaded: dict[str, LoadedEmbedding] = {}
    first = EmbeddingSpec("EasyNeg", "1", str(embedding_files["pt"]))  # two vectors
    second = EmbeddingSpec("EasyNeg", "2", str(embedding_files["safetensors"]))  # one

    def rows(count: int) -> torch.Tensor:
        ids = pipe.tokenizer.convert_tokens_to_ids(["easyneg", *(f"easyneg_{i}" for i in range(1, count))])
        return pipe.text_encoder.get_input_embeddings().weight[ids]

    load_embeddings(pipe, loaded, (first,))
    named = models.condition(pipe, "a cat, easyneg", "")
    load_embeddings(pipe, loaded, (second,))
    assert torch.equal(rows(1), read_embedding(embedding_files["safetensors"])["clip_l"])
    assert "easyneg_1" not in pipe.tokenizer.get_vocab()
    assert loaded["easyneg"].tokens == ("easyneg",)
    assert not torch.equal(models.condition(pipe, "a cat, easyneg", "").positive, named.positive)
    assert torch.equal(models.condition(pipe, "a cat, blurry", "").positive, plain.positive)
    load_embeddings(pipe, loaded, (first,))  # a job of the older version brings it back
    assert torch.equal(rows(2), read_embedding(embedding_files["pt"])["clip_l"])
    assert torch.equal(models.condition(pipe, "a cat, easyneg", "").positive, named.positive)


def test_prompts_name_embeddings_and_the_record_keeps_them(
    api: Api, embedding_files: dict[str, Path], tiny_sdxl: Path
) -> None:
    def image(**fields: object) -> bytes:
        body = api.infer(seed=4, steps=4, **fields)
        assert body["error_code"] == 0, body
        return api.images(body)[0]

    plain = image(negative_prompt="blurry")
    register(api, "embedding", embedding_files["pt"], "EasyNeg")
    register(api, "embedding", embedding_files["safetensors"], "badhands")
    register(api, "embedding", embedding_files["sdxl"], "negxl")
    named = image(negative_prompt="blurry, easyneg")
    assert named != plain
    assert image(negative_prompt="blurry, <embedding:EasyNeg>") == named == image(negative_prompt="blurry, EASYNEG")
    assert image(negative_prompt="blurry") == plain  # loaded, but not named: nothing changes
    assert image(negative_prompt="blurry, (easyneg:1.4)") != named  # weighting reaches its vectors
    assert image(negative_prompt="blurry, easyneg, badhands") not in (plain, named)
    # An SDXL embedding's name in an SD 1.5 prompt is plain text; the explicit form is refused.
    assert image(negative_prompt="blurry, negxl") != image(negative_prompt="blurry, <embedding:badhands>")
    before = api.balance()
    refused = api.infer(negative_prompt="<embedding:negxl>")
    assert refused["error_code"] == 1 and "negative_prompt" in refused["message"] and "sd15" in refused["message"]
    assert api.balance() == before
    body = api.infer(seed=4, steps=4, negative_prompt="blurry, easyneg", **{"async": "true"})
    token_id = api.services.accounts.authenticate(api.token).id
    record = api.services.inference.inferences.get(body["inf_id"], token_id)
    assert record.resolved["embeddings"] == [{"id": "EasyNeg", "version": "1"}]
    # SDXL: both encoders take the file's two halves.
    register(api, "checkpoint", tiny_sdxl, "xl")
    assert image(model_id="xl", prompt="a cat negxl") != image(model_id="xl", prompt="a cat")
    listed = api.post("/api/models")["embeddings"]
    assert {(e["id"], e["base_model"], e["vectors"]) for e in listed} == {
        ("EasyNeg", "sd15", 2),
        ("badhands", "sd15", 1),
        ("negxl", "sdxl", 3),
    }


def test_models_add_names_an_embedding_after_its_file(embedding_files: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from daguerre.cli import app
    from daguerre.services.container import open_database
    from daguerre.settings import Settings

    command = ["models", "add", str(embedding_files["pt"]), "--kind", "embedding", "--title", "E"]
    added = CliRunner().invoke(app, [*command, "--data-dir", str(tmp_path)])
    assert added.exit_code == 0 and "embedding EasyNeg" in added.output, added.output
    record = open_database(Settings(data_dir=tmp_path)).catalog.get("EasyNeg")
    assert (record.kind.value, record.family, record.options["vectors"]) == ("embedding", "sd15", 2)
