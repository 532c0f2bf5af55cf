"""POST /api/video on tiny random-weight Wan 2.1 (T2V, I2V) and AnimateDiff models.

Frame sizes are the tiny models' own, an eighth of the nominal ones (conftest's SMALL_FRAMES)
(832x480 -> 96x64) so the clips render in about a second on a CPU; one test renders the true 480p
size.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from daguerre.cli import app as cli
from daguerre.demo.install import install_demo
from daguerre.engine.client import JobHandle
from daguerre.engine.jobs import Failed, Finished, Queued, Started, VideoJob, VideoResult
from daguerre.services.catalog import Kind
from daguerre.services.container import open_database
from daguerre.services.pricing import video_cost
from daguerre.services.probing import UnsupportedModel, inspect_model
from daguerre.services.video import frame_size
from daguerre.settings import Pricing, RemoteImageSettings, Settings
from tests.support.api import Api, answered, register
from tests.support.images import solid_png
from tests.support.video import FAST, probe, video


def error(body: dict[str, Any], *parts: str) -> None:
    assert body["error_code"] == 1, body
    assert set(body) <= {"error_code", "message", "field"}, body
    assert body.get("field", "") in body["message"]  # the field an error is about is the one it names
    for part in parts:
        assert part in body["message"], body["message"]


# Generation


def test_text_to_video_is_browser_playable_h264(vapi: Api) -> None:
    before = vapi.balance()
    body = video(vapi, num_frames=9, steps=1, fps=24, seed=5, negative_prompt="blurry", scale=3)
    assert body["error_code"] == 0, body
    assert body["video_url"].startswith("http://testserver/files/videos/") and body["video_url"].endswith(".mp4")
    assert (body["width"], body["height"], body["num_frames"], body["fps"], body["seed"]) == (96, 64, 9, 24, 5)
    response = vapi.client.get(body["video_url"])
    assert response.headers["content-type"] == "video/mp4"
    info = probe(response.content)
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert (info["fps"], info["frames"], info["size"]) == (24, 9, (96, 64))
    assert vapi.balance() == pytest.approx(before - body["credit_cost"])
    record = vapi.services.video.inferences.get(body["inf_id"], vapi.services.accounts.authenticate(vapi.token).id)
    assert (record.kind, record.status, record.model_id) == ("video", "done", "wan")
    assert record.request["negative_prompt"] == "blurry" and record.resolved["scale"] == 3


def test_the_same_seed_reproduces_the_clip(vapi: Api) -> None:
    first, second, other = (video(vapi, seed=s, **FAST) for s in (11, 11, 12))
    pixels = [probe(vapi.fetch(b["video_url"]))["pixels"] for b in (first, second, other)]
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


def test_true_480p_size(vapi: Api, tiny_video_models: dict[str, Path]) -> None:
    register(vapi, "video", tiny_video_models["t2v"], "wanfull")  # no frame_sizes: the nominal ones
    body = video(vapi, model_id="wanfull", num_frames=1, steps=1, scale=1)
    assert (body["width"], body["height"]) == (832, 480)
    assert probe(vapi.fetch(body["video_url"]))["size"] == (832, 480)


def test_image_to_video_from_this_servers_storage_keeps_portrait(vapi: Api) -> None:
    vapi.services.storage.put("images/first.png", solid_png(300, 500))
    body = video(vapi, model_id="wani2v", image_url="http://testserver/files/images/first.png", seed=1, **FAST)
    assert body["error_code"] == 0, body
    assert (body["width"], body["height"]) == (64, 96)  # 480x832 scaled
    info = probe(vapi.fetch(body["video_url"]))
    assert (info["frames"], info["size"], info["fps"]) == (5, (64, 96), 16)


class _ImageHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = solid_png(200, 120)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def image_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/frame.png"
    httpd.shutdown()
    httpd.server_close()


def test_image_to_video_from_a_remote_url(vapi: Api, image_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = vapi.balance()
    body = video(vapi, model_id="wani2v", image_url=image_server, **FAST)
    error(body, "only fetches from public addresses")
    assert vapi.balance() == before
    monkeypatch.setattr(vapi.services.video.images, "settings", RemoteImageSettings(allow_private=True))
    body = video(vapi, model_id="wani2v", image_url=image_server, **FAST)
    assert body["error_code"] == 0, body
    assert (body["width"], body["height"]) == (96, 64)


def test_animatediff_animates_an_image_model(vapi: Api) -> None:
    body = video(vapi, model_id="tiny", num_frames=3, steps=1, scale=1, fps=8)
    assert body["error_code"] == 0, body
    info = probe(vapi.fetch(body["video_url"]))
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert (info["frames"], info["fps"], info["size"]) == (3, 8, (96, 64))
    record = vapi.services.video.inferences.get(body["inf_id"], vapi.services.accounts.authenticate(vapi.token).id)
    assert record.resolved["motion_adapter"] == {"id": "motion", "version": "1"}


# Defaults, recorded from the job the engine receives


@pytest.fixture
def jobs(vapi: Api, monkeypatch: pytest.MonkeyPatch) -> list[VideoJob]:
    seen: list[VideoJob] = []

    async def submit(job_id: str, job: VideoJob, owner: str, *, readmitted: bool = False) -> JobHandle:
        seen.append(job)
        return answered(job_id, [Queued(0), Started(), Finished(VideoResult(b"not really an mp4"))])

    monkeypatch.setattr(vapi.services.engine, "submit", submit)
    return seen


def test_defaults(vapi: Api, jobs: list[VideoJob]) -> None:
    body = video(vapi)
    job = jobs[-1]
    assert (job.architecture, job.width, job.height, job.fps) == ("wan", 96, 64, 16)
    assert (job.num_frames, job.steps, job.guidance_scale, job.negative_prompt) == (81, 30, 5.0, "")
    assert body["seed"] == job.seed and 0 <= job.seed < 2**32 and job.image is None
    assert body["credit_cost"] == 12.0  # the 480p, 81-frame, 30-step reference clip
    video(vapi, model_id="tiny")
    job = jobs[-1]
    assert (job.architecture, job.num_frames, job.steps, job.guidance_scale) == ("animatediff", 16, 25, 7.5)
    assert job.motion_adapter is not None and job.motion_adapter.id == "motion"


def test_string_values_and_resolution_case(vapi: Api, jobs: list[VideoJob]) -> None:
    body = video(vapi, resolution="720P", fps="30", num_frames="13", steps="2.0", scale="4.5", seed="7")
    job = jobs[-1]
    assert (job.width, job.height, job.fps, job.num_frames, job.steps, job.guidance_scale, job.seed) == (
        160,
        96,
        30,
        13,
        2,
        4.5,
        7,
    )
    assert body["credit_cost"] == video_cost(Pricing(), 1280, 720, 13, 2) / 1000


def test_json_body(vapi: Api, jobs: list[VideoJob]) -> None:
    response = vapi.client.post(
        "/api/video", json={"access_token": vapi.token, "model_id": "wan", "prompt": "x", "num_frames": 5}
    )
    assert response.json()["error_code"] == 0 and jobs[-1].num_frames == 5


# Errors: each names the field, the value and what is allowed, and costs nothing


@pytest.mark.parametrize(
    ("fields", "parts"),
    [
        ({"model_id": None}, ["model_id is required"]),
        ({"prompt": None}, ["prompt is required"]),
        ({"model_id": "nope"}, ["'nope' not found"]),
        ({"resolution": "1080p"}, ["invalid resolution '1080p'", "480p, 720p"]),
        ({"fps": 0}, ["invalid fps '0'", "from 1 to 60"]),
        ({"fps": 61}, ["invalid fps '61'", "from 1 to 60"]),
        ({"fps": "fast"}, ["invalid fps 'fast'", "an integer"]),
        ({"num_frames": 0}, ["invalid num_frames '0'", "from 1 to 81"]),
        ({"num_frames": 85}, ["invalid num_frames '85'", "from 1 to 81"]),
        ({"num_frames": 6}, ["invalid num_frames 6", "4k+1"]),
        ({"steps": 0}, ["invalid steps '0'", "from 1 to 50"]),
        ({"steps": 51}, ["invalid steps '51'"]),
        ({"scale": 0.5}, ["invalid scale '0.5'", "from 1 to 20"]),
        ({"scale": 21}, ["invalid scale '21'"]),
        ({"seed": -2}, ["invalid seed '-2'"]),
        ({"version": "9"}, ["no version '9'"]),
        ({"model_id": "wani2v"}, ["image_url is required", "wani2v"]),
        ({"image_url": "https://example.com/a.png"}, ["text-to-video and takes no image"]),
        ({"model_id": "tiny", "resolution": "720p"}, ["invalid resolution '720p'", "supports 480p"]),
        ({"model_id": "tiny", "num_frames": 33}, ["invalid num_frames 33", "from 1 to 32"]),
        ({"model_id": "motion"}, ["motion adapter", "image model"]),
        ({"model_id": "wani2v", "image_url": "ftp://example.com/a.png"}, ["only http and https"]),
        ({"model_id": "wani2v", "image_url": "http://169.254.169.254/x"}, ["public addresses"]),
        ({"model_id": "wani2v", "image_url": "http://testserver/files/images/none.png"}, ["no such file"]),
    ],
)
def test_invalid_requests(vapi: Api, fields: dict[str, Any], parts: list[str]) -> None:
    before = vapi.balance()
    body = {"access_token": vapi.token, "model_id": "wan", "prompt": "a cat", **fields}
    response = vapi.client.post("/api/video", data={k: v for k, v in body.items() if v is not None})
    error(response.json(), *parts)
    assert vapi.balance() == before


def test_unauthorized_and_uploads(vapi: Api) -> None:
    response = vapi.client.post("/api/video", data={"access_token": "wrong", "model_id": "wan", "prompt": "x"})
    error(response.json(), "invalid access_token")
    response = vapi.client.post(
        "/api/video",
        data={"access_token": vapi.token, "model_id": "wan", "prompt": "x"},
        files={"image": ("a.png", solid_png(8, 8), "image/png")},
    )
    error(response.json(), "not as an upload")


def test_image_models_need_a_motion_adapter(api: Api) -> None:
    error(video(api, model_id="tiny"), "no installed AnimateDiff motion adapter animates it")
    assert api.post("/api/models")["video_models"] == []


def test_insufficient_credits(vapi: Api) -> None:
    token, _ = vapi.services.accounts.create_token(credits=0.1)
    response = vapi.client.post("/api/video", data={"access_token": token, "model_id": "wan", "prompt": "x"})
    error(response.json(), "not enough credits", "needs 12")


def test_failed_work_is_refunded(vapi: Api, tiny_video_models: dict[str, Path], tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_video_models["t2v"], tmp_path / "broken-wan")
    for weights in (broken / "transformer").glob("*.safetensors"):
        weights.write_bytes(b"not weights")
    register(vapi, "video", broken, "broken")
    before = vapi.balance()
    body = video(vapi, model_id="broken", **FAST)
    error(body, "generation failed")
    assert vapi.balance() == before
    ledger = vapi.services.accounts.ledger(vapi.services.accounts.authenticate(vapi.token).id)
    assert [row.kind for row in ledger[-2:]] == ["charge", "refund"]


def test_engine_failure_after_charge_is_refunded(vapi: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    async def fail(job_id: str, job: VideoJob, owner: str, *, readmitted: bool = False) -> JobHandle:
        return answered(job_id, [Queued(0), Started(), Failed("generation failed: out of memory")])

    monkeypatch.setattr(vapi.services.engine, "submit", fail)
    before = vapi.balance()
    body = video(vapi)
    error(body, "out of memory")
    assert vapi.balance() == before


# Listing, registration, pricing, sizes


def test_video_models_are_listed_with_their_mode(vapi: Api) -> None:
    listed = {m["id"]: m for m in vapi.post("/api/models")["video_models"]}
    assert set(listed) == {"wan", "wani2v", "tiny"}  # the motion adapter animates "tiny"; not a model itself
    assert (listed["wan"]["mode"], listed["wani2v"]["mode"], listed["tiny"]["mode"]) == ("t2v", "i2v", "t2v")
    assert listed["wan"]["resolutions"] == ["480p", "720p"] and listed["tiny"]["resolutions"] == ["480p"]
    assert listed["tiny"]["architecture"] == "animatediff" and listed["tiny"]["motion_adapter"] == "motion"
    assert all(m["type"] == "video" and isinstance(m["cover_img"], str) for m in listed.values())


def test_inspector(tiny_video_models: dict[str, Path], tiny_sd15: Path, tmp_path: Path) -> None:
    t2v, i2v, adapter = (inspect_model("video", tiny_video_models[k]) for k in ("t2v", "i2v", "motion_adapter"))
    assert (t2v.family, t2v.options["mode"], t2v.options["architecture"]) == ("wan2.1", "t2v", "wan")
    assert i2v.options["mode"] == "i2v"
    assert adapter.family == "sd15" and adapter.options["max_frames"] == 32
    named = shutil.copytree(tiny_video_models["i2v"], tmp_path / "Wan2.1-I2V-14B-480P-Diffusers")
    assert inspect_model("video", named).options["resolutions"] == ["480p"]
    refusals = [
        (tiny_sd15, "StableDiffusionPipeline"),
        (tmp_path, "neither"),
        (tiny_sd15 / "model_index.json", "folders"),
    ]
    for path, why in refusals:
        with pytest.raises(UnsupportedModel, match=why):
            inspect_model("video", path)


def test_cli_registers_video_models(tiny_video_models: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    for path in tiny_video_models.values():
        result = runner.invoke(
            cli, ["models", "add", str(path), "--kind", "video", "--title", path.name, "--data-dir", str(tmp_path)]
        )
        assert result.exit_code == 0, result.output
    listing = runner.invoke(cli, ["models", "list", "--data-dir", str(tmp_path)])
    assert listing.output.count("video") >= 3


def test_cli_frame_sizes_are_the_models_own(tiny_video_models: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    base = [
        "models",
        "add",
        str(tiny_video_models["t2v"]),
        "--kind",
        "video",
        "--title",
        "W",
        "--data-dir",
        str(tmp_path),
    ]
    added = runner.invoke(cli, [*base, "--id", "w", "--frame-size", "480p=640x368", "--frame-size", "720p=960x544"])
    assert added.exit_code == 0, added.output
    database = open_database(Settings(data_dir=tmp_path))
    assert database.catalog.get("w").options["frame_sizes"] == {"480p": [640, 368], "720p": [960, 544]}
    database.engine.dispose()
    for bad in ("480p=650x368", "1080p=1920x1088", "480p=368x640", "480p"):
        refused = runner.invoke(cli, [*base, "--frame-size", bad])
        assert refused.exit_code == 1 and "--frame-size" in refused.output, bad


def test_demo_installs_video_models(tmp_path: Path) -> None:
    from daguerre.services.container import open_database

    settings = Settings(data_dir=tmp_path)
    database = open_database(settings)
    install_demo(settings, database.catalog)
    install_demo(settings, database.catalog)  # idempotent
    videos = {m.id: m for m in database.catalog.list(Kind.VIDEO)}
    assert {m.options["mode"] for m in videos.values()} == {"t2v", "i2v"}
    assert {m.options["architecture"] for m in videos.values()} == {"wan", "animatediff"}
    database.engine.dispose()


def test_pricing_grows_with_pixels_frames_and_steps() -> None:
    pricing = Pricing()
    assert video_cost(pricing, 832, 480, 81, 30) == 12_000
    assert video_cost(pricing, 1280, 720, 81, 30) == round(12 * 1280 * 720 / (832 * 480), 2) * 1000
    assert video_cost(pricing, 832, 480, 41, 30) < 12_000 < video_cost(pricing, 832, 480, 81, 40)
    assert video_cost(pricing, 832, 480, 1, 1) == 500  # the floor


def test_frame_sizes() -> None:
    assert frame_size("480p", False) == (832, 480)
    assert frame_size("480p", True) == (480, 832)
    assert frame_size("720p", False) == (1280, 720)
    assert frame_size("720p", True) == (720, 1280)
    own = {"480p": [96, 64]}
    assert frame_size("480p", False, own) == (96, 64) and frame_size("480p", True, own) == (64, 96)
    assert frame_size("720p", False, own) == (1280, 720)  # a size the model does not set: the nominal one


def test_jobs_carry_plain_data() -> None:
    assert all(
        f.type in ("ModelSpec", "str", "int", "float", "ModelSpec | None", "bytes | None")
        for f in dataclasses.fields(VideoJob)
    )
