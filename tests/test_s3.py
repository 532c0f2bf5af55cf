"""Outputs and model files on a real S3 server (SeaweedFS on loopback, conftest's `s3_server`).

An image made through one gateway is served by another (one Postgres, one bucket). A checkpoint
registered by URL (`daguerre models add s3://...`) renders, fetched once per node into a cache
that checks each copy's SHA-256, fetches a damaged copy again, and keeps to its byte budget; a
LoRA, an embedding and a VAE registered by URL apply as the same files registered by path do.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file
from typer.testing import CliRunner

from daguerre.app import create_app
from daguerre.cli import app as cli
from daguerre.demo.tiny_models import build_tiny_lora
from daguerre.engine.diffusers_classes import AutoencoderKL
from daguerre.engine.loading.model_files import ModelFileError, ModelFiles
from daguerre.engine.runtime.local import LocalEngine
from daguerre.services.catalog import Format, NewModel
from daguerre.services.container import open_database
from daguerre.settings import GatewaySettings, S3Settings, Settings
from tests.support.api import SMALL, RecordingEngine
from tests.support.ldm_layout import vae_to_ldm
from tests.support.s3 import S3Server


def prefix(server: S3Server) -> str:
    """A folder of the session's bucket for one test: bucket/prefix, without s3://."""
    return f"{server.bucket}/{secrets.token_hex(4)}"


def s3_settings(server: S3Server) -> S3Settings:
    return S3Settings(endpoint_url=server.endpoint_url, access_key_id=server.key, secret_access_key=server.secret)


def test_an_image_made_through_one_gateway_is_served_by_another(
    tmp_path: Path, postgres_url: str, s3_server: S3Server, engine: LocalEngine, tiny_sd15: Path
) -> None:
    outputs = f"s3://{prefix(s3_server)}/daguerre"

    def gateway(name: str) -> Settings:
        return Settings(
            data_dir=tmp_path / name,
            database_url=postgres_url,
            storage_url=outputs,
            s3=s3_settings(s3_server),
            gateway=GatewaySettings(id=name),
        )

    database = open_database(gateway("setup"))
    database.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="tiny", title="Tiny"))
    token, _ = database.accounts.create_token(credits=10)
    database.engine.dispose()
    with (
        TestClient(create_app(gateway("a"), engine)) as a,
        TestClient(create_app(gateway("b"), RecordingEngine())) as b,
    ):
        body = a.post("/api/inference", data={"access_token": token, "model_id": "tiny", "prompt": "p", **SMALL})
        path = urlsplit(body.json()["images"][0]).path
        made = a.get(path)
        served = b.get(path)
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        assert served.content == made.content and made.content.startswith(b"\x89PNG")
        key = path.removeprefix("/files/")
        assert s3_server.filesystem().cat(f"{outputs.removeprefix('s3://')}/{key}") == made.content
        assert b.get("/files/images/nothing-here.png").status_code == 404
        # The job's status too, through the gateway that did not run it.
        status = b.get(f"/api/jobs/{body.json()['inf_id']}", params={"access_token": token}).json()
        assert status["status"] == "done" and urlsplit(status["images"][0]).path == path


def test_a_checkpoint_added_by_url_renders_and_a_second_load_uses_the_nodes_copy(
    tmp_path: Path, s3_server: S3Server, tiny_single_file: tuple[Path, Path]
) -> None:
    checkpoint, skeleton = tiny_single_file
    url = f"s3://{prefix(s3_server)}/models/tiny.safetensors"
    s3_server.filesystem().put(str(checkpoint), url.removeprefix("s3://"))
    data = tmp_path / "data"
    added = CliRunner().invoke(
        cli,
        ["models", "add", url, "--title", "S3", "--id", "s3tiny", "--config", str(skeleton), "--data-dir", str(data)],
        env=s3_server.env(),
    )
    assert added.exit_code == 0, added.output
    settings = Settings(data_dir=data, s3=s3_settings(s3_server))
    database = open_database(settings)
    (version,) = database.catalog.get("s3tiny").versions
    assert (version.path, version.format) == (url, Format.SINGLE_FILE)
    assert version.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    token, _ = database.accounts.create_token(credits=10)
    database.engine.dispose()

    node = tmp_path / "node"  # another machine's cache: `models add` fetched into the data dir's
    images = []
    for load in range(2):  # a second engine on the same node, as after a restart, loads the model again
        files = ModelFiles(node, 1024**3, settings.fsspec_options)
        worker = LocalEngine(cache_dir=tmp_path / "engine-cache", device="cpu", model_files=files)
        with TestClient(create_app(settings, worker)) as client:
            fields = {"access_token": token, "model_id": "s3tiny", "prompt": "p", **SMALL, "seed": 3}
            body = client.post("/api/inference", data=fields).json()
            assert body["error_code"] == 0, body
            images.append(client.get(urlsplit(body["images"][0]).path).content)
        assert (worker.cache.loads, files.fetches) == (1, 1 if load == 0 else 0)
    assert images[0] == images[1]
    assert [file.name for file in node.glob("*.safetensors")] == [f"{version.sha256}.safetensors"]


def test_a_lora_an_embedding_and_a_vae_added_by_url_apply_as_the_same_files_by_path(
    tmp_path: Path, s3_server: S3Server, tiny_sd15: Path
) -> None:
    files = {
        "lora": build_tiny_lora(tiny_sd15, tmp_path / "style.safetensors", seed=4),
        "embedding": tmp_path / "e.pt",
        "vae": tmp_path / "kl-f8.safetensors",
    }
    torch.manual_seed(8)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(tiny_sd15 / "vae"))
    save_file(
        {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(vae.state_dict()).items()},
        str(files["vae"]),
    )
    torch.save(
        {"string_to_param": {"*": torch.randn(2, 32, generator=torch.Generator().manual_seed(6))}}, files["embedding"]
    )
    folder = prefix(s3_server)
    data = tmp_path / "data"
    for kind, path in files.items():
        url = f"s3://{folder}/{path.name}"
        s3_server.filesystem().put(str(path), url.removeprefix("s3://"))
        for source, name in ((url, f"s3{kind}"), (str(path), f"local{kind}")):
            arguments = [
                "models",
                "add",
                source,
                "--kind",
                kind,
                "--title",
                name,
                "--id",
                name,
                "--data-dir",
                str(data),
            ]
            added = CliRunner().invoke(cli, arguments, env=s3_server.env())
            assert added.exit_code == 0, added.output
    settings = Settings(data_dir=data, s3=s3_settings(s3_server))
    database = open_database(settings)
    assert database.catalog.get("s3lora").latest.path.startswith("s3://")
    for model_id, vae_id in (("tiny", None), ("s3tiny", "s3vae"), ("localtiny", "localvae")):
        options = {"vae": vae_id} if vae_id else None
        database.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id=model_id, title="T", options=options))
    token, _ = database.accounts.create_token(credits=10)
    database.engine.dispose()
    node = ModelFiles(tmp_path / "node", 1024**3, settings.fsspec_options)
    worker = LocalEngine(cache_dir=tmp_path / "engine-cache", device="cpu", model_files=node)
    with TestClient(create_app(settings, worker)) as client:

        def render(lora: str | None, prompt: str, model_id: str = "tiny") -> bytes:
            fields = {"access_token": token, "model_id": model_id, "prompt": prompt, **SMALL, "seed": 5}
            body = client.post("/api/inference", data={**fields, **({"lora": lora} if lora else {})}).json()
            assert body["error_code"] == 0, body
            return client.get(urlsplit(body["images"][0]).path).content

        plain = render(None, "a cat")
        by_url = render("s3lora", "a cat, s3embedding")
        assert by_url == render("locallora", "a cat, localembedding") != plain
        assert render(None, "a cat, s3embedding") != plain  # the embedding applies by itself too
        assert render(None, "a cat", "s3tiny") == render(None, "a cat", "localtiny") != plain
    assert node.fetches == 3


def test_the_model_file_cache_refetches_a_damaged_copy_and_keeps_to_its_budget(
    tmp_path: Path, s3_server: S3Server
) -> None:
    name = prefix(s3_server)
    fs = s3_server.filesystem()
    contents = {letter: secrets.token_bytes(1000) for letter in "abc"}
    urls = {letter: f"s3://{name}/{letter}.safetensors" for letter in contents}
    sums = {letter: hashlib.sha256(data).hexdigest() for letter, data in contents.items()}
    for letter, data in contents.items():
        fs.pipe(f"{name}/{letter}.safetensors", data)
    options = Settings(data_dir=tmp_path, s3=s3_settings(s3_server)).fsspec_options
    folder = tmp_path / "copies"

    # Two processes of one node asking at once (two caches on one folder): fetched once.
    nodes = [ModelFiles(folder, 2500, options) for _ in range(2)]
    threads = [threading.Thread(target=node.local, args=(urls["a"], sums["a"])) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    files = nodes[0]
    copy = files.local(urls["a"], sums["a"])
    assert copy.read_bytes() == contents["a"] and sum(node.fetches for node in nodes) == 1

    copy.write_bytes(b"damaged" + contents["a"][7:])  # the same size, other bytes
    assert files.local(urls["a"], sums["a"]).read_bytes() == contents["a"]
    assert files.fetches + nodes[1].fetches == 2

    with pytest.raises(ModelFileError, match="does not match the checksum"):
        files.local(urls["b"], sums["c"])
    with pytest.raises(ModelFileError, match="not found"):
        files.local(f"s3://{name}/missing.safetensors", hashlib.sha256(b"other").hexdigest())

    files.local(urls["b"], sums["b"])
    files.local(urls["a"], sums["a"])  # used after b: b is now the least recently used
    files.local(urls["c"], sums["c"])
    assert sorted(path.name for path in folder.glob("*.safetensors")) == sorted(
        f"{sums[letter]}.safetensors" for letter in "ac"
    )
    assert files.used_bytes() == 2000
