"""POST /api/upscale end to end: parameters, defaults, ranges, errors, ownership, credits, hires fix."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from daguerre.app import create_app
from daguerre.engine.runtime.local import LocalEngine
from daguerre.services.catalog import Format, NewModel
from daguerre.settings import Settings
from tests.support.api import Api, register
from tests.support.images import decode


@pytest.fixture
def up(api: Api, tiny_upscalers: dict[int, Path]) -> Api:
    """The api fixture with the tiny x2 and x4 upscalers installed."""
    register(api, "upscaler", tiny_upscalers[2], "x2")
    register(api, "upscaler", tiny_upscalers[4], "x4")
    return api


def upscale(api: Api, source: dict[str, Any], index: int = 0, **fields: Any) -> dict[str, Any]:
    return api.post("/api/upscale", inf_id=source["inf_id"], url=source["images"][index], **fields)


def record(api: Api, inf_id: str, token: str | None = None) -> Any:
    token_id = api.services.accounts.authenticate(token or api.token).id
    return api.services.inference.inferences.get(inf_id, token_id)


def test_esrgan_defaults_to_2x_with_the_x2_model(up: Api) -> None:
    source = up.infer(seed=1)
    before = up.balance()
    body = upscale(up, source)
    assert body["error_code"] == 0, body
    assert (body["width"], body["height"]) == (256, 256)
    image = Image.open(io.BytesIO(up.fetch(body["output"])))
    assert image.format == "PNG" and image.size == (256, 256)
    # cost = max(min_upscale_cost, upscale_rate * pixels / 1024²) with the default settings
    assert body["credit_cost"] == round(max(0.05, 0.5 * 256 * 256 / 1024**2), 2)
    assert up.balance() == pytest.approx(before - body["credit_cost"])
    upscaled = record(up, body["inf_id"])
    assert upscaled.kind == "upscale" and upscaled.model_id == "x2" and upscaled.params["request"]["type"] == "esrgan"
    assert body["output"].endswith(upscaled.outputs[0])
    # The same request as JSON gives the same image: the model is deterministic.
    response = up.client.post(
        "/api/upscale", json={"access_token": up.token, "inf_id": source["inf_id"], "url": source["images"][0]}
    )
    assert up.fetch(response.json()["output"]) == up.fetch(body["output"])


def test_any_scale_gives_the_exact_size_from_the_smallest_model_reaching_it(up: Api) -> None:
    source = up.infer(seed=1)
    for scale, size, model in [("2.5", 320, "x4"), ("3.3", 422, "x4"), ("4", 512, "x4"), ("2.0", 256, "x2")]:
        body = upscale(up, source, scale=scale)
        assert body["error_code"] == 0, body
        assert Image.open(io.BytesIO(up.fetch(body["output"]))).size == (size, size)
        assert record(up, body["inf_id"]).model_id == model
        assert body["credit_cost"] == round(max(0.05, 0.5 * size * size / 1024**2), 2)


def test_bad_and_missing_values_are_named_in_the_envelope(up: Api) -> None:
    source = up.infer(seed=1)
    before = up.balance()
    cases = [
        ("scale", "1.9", "invalid scale '1.9': must be a number from 2 to 4"),
        ("scale", "4.5", "invalid scale '4.5': must be a number from 2 to 4"),
        ("scale", "big", "invalid scale 'big': must be a number from 2 to 4"),
        ("strength", "-0.1", "invalid strength '-0.1': must be a number from 0 to 1"),
        ("strength", "1.5", "invalid strength '1.5': must be a number from 0 to 1"),
        ("type", "latent", "invalid type 'latent': must be one of esrgan, hires_fix"),
    ]
    for field, value, expected in cases:
        assert upscale(up, source, **{field: value}) == {"error_code": 1, "message": expected, "field": field}
    for missing in ("inf_id", "url"):
        fields = {"inf_id": source["inf_id"], "url": source["images"][0]}
        del fields[missing]
        refused = up.post("/api/upscale", **fields)
        assert refused == {"error_code": 1, "message": f"{missing} is required", "field": missing}
    assert up.balance() == before


def test_another_tokens_inference_is_not_found(up: Api) -> None:
    source = up.infer(seed=1)
    other, _ = up.services.accounts.create_token(name="other", credits=100)
    fields = {"access_token": "not a token", "inf_id": source["inf_id"], "url": source["images"][0]}
    assert up.client.post("/api/upscale", data=fields).json()["error_code"] == 1
    response = up.client.post(
        "/api/upscale", data={"access_token": other, "inf_id": source["inf_id"], "url": source["images"][0]}
    )
    assert response.json() == {"error_code": 1, "message": f"inference {source['inf_id']!r} not found"}
    assert up.services.accounts.authenticate(other).balance == 100
    unknown = up.post("/api/upscale", inf_id="doesnotexist", url=source["images"][0])
    assert unknown == {"error_code": 1, "message": "inference 'doesnotexist' not found"}


def test_the_url_must_be_an_image_of_that_inference(up: Api) -> None:
    first, second = up.infer(seed=1), up.infer(seed=2)
    before = up.balance()
    for url in (second["images"][0], "http://testserver/files/images/guess.png", "not a url"):
        body = up.post("/api/upscale", inf_id=first["inf_id"], url=url)
        assert body == {
            "error_code": 1,
            "message": f"invalid url {url!r}: must be the URL of an image of inference {first['inf_id']}",
            "field": "url",
        }
    assert up.balance() == before
    # The key is what counts: the same image behind another host name (a proxy) is accepted.
    moved = first["images"][0].replace("http://testserver", "https://images.example.com")
    assert up.post("/api/upscale", inf_id=first["inf_id"], url=moved)["error_code"] == 0


def test_output_beyond_the_size_limit_is_refused_before_charging(
    settings: Settings, engine: LocalEngine, tiny_sd15: Path, tiny_upscalers: dict[int, Path]
) -> None:
    upscaling = settings.upscale.model_copy(update={"max_output_pixels": 300 * 300})
    limited = settings.model_copy(update={"upscale": upscaling})
    with TestClient(create_app(limited, engine=engine), base_url="http://testserver") as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        services.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="tiny", title="Tiny"))
        token, _ = services.accounts.create_token(credits=10)
        api = Api(client, token)
        register(api, "upscaler", tiny_upscalers[4], "x4")
        source = api.infer(seed=1)
        before = api.balance()
        assert upscale(api, source, scale=2)["error_code"] == 0  # 256x256 fits
        body = upscale(api, source, scale=3)
        assert body == {
            "error_code": 1,
            "message": "invalid scale 3.0: the output would be 384x384 (147456 pixels), over this server's limit "
            "of 90000 pixels (setting upscale.max_output_pixels)",
            "field": "scale",
        }
        hires = upscale(api, source, type="hires_fix", strength="0")
        assert hires["error_code"] == 0  # 2x: 256x256
        api.services.settings.upscale.max_output_pixels = 200 * 200
        refused = upscale(api, source, type="hires_fix")
        assert refused["message"].startswith("invalid type 'hires_fix': the output would be 256x256")
        assert api.balance() == pytest.approx(before - 0.05 - hires["credit_cost"])


def test_without_an_upscaler_esrgan_says_so_and_costs_nothing(api: Api) -> None:
    source = api.infer(seed=1)
    before = api.balance()
    body = upscale(api, source)
    assert body["error_code"] == 1 and "no ESRGAN upscaler is installed" in body["message"]
    assert "--kind upscaler" in body["message"]
    assert api.balance() == before


def test_failed_work_is_refunded(api: Api, tiny_upscalers: dict[int, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.pth"
    broken.write_bytes(tiny_upscalers[2].read_bytes())
    register(api, "upscaler", broken, "broken")
    broken.write_bytes(b"no longer a model")  # the file went bad after it was registered
    source = api.infer(seed=1)
    before = api.balance()
    body = upscale(api, source)
    assert body["error_code"] == 1 and body["message"].startswith("generation failed")
    assert api.balance() == before
    ledger = api.services.accounts.ledger(api.services.accounts.authenticate(api.token).id)
    assert [row.kind for row in ledger[-2:]] == ["charge", "refund"]


def test_esrgan_can_upscale_an_upscale_but_hires_fix_needs_the_original(up: Api) -> None:
    source = up.infer(seed=1)
    first = upscale(up, source)
    again = up.post("/api/upscale", inf_id=first["inf_id"], url=first["output"], scale="2")
    assert (again["error_code"], again["width"], again["height"]) == (0, 512, 512)
    hires = up.post("/api/upscale", inf_id=first["inf_id"], url=first["output"], type="hires_fix")
    assert hires == {
        "error_code": 1,
        "message": f"invalid inf_id {first['inf_id']!r}: hires_fix re-renders an image from /api/inference, "
        "and this is an upscale",
        "field": "inf_id",
    }


def test_hires_fix_is_reproducible_and_survives_a_restart(up: Api, settings: Settings, engine: LocalEngine) -> None:
    source = up.infer(seed=7)
    first = upscale(up, source, type="hires_fix", strength="0.5")
    assert first["error_code"] == 0, first
    assert (first["width"], first["height"]) == (256, 256)
    # One image at 256x256 for int(2 steps * 0.5) = 1 step, plus the 2x upscale.
    render = max(0.05, 0.5 * (256 * 256 / 512**2) * (1 / 30))
    assert first["credit_cost"] == pytest.approx(round(max(0.05, 0.5 * 256 * 256 / 1024**2), 2) + round(render, 2))
    assert record(up, first["inf_id"]).model_id == "tiny"
    image = up.fetch(first["output"])
    assert Image.open(io.BytesIO(image)).size == (256, 256)
    # The image-to-image pass shares the text-to-image pipeline's components and leaves it as it was.
    assert up.fetch(up.infer(seed=7)["images"][0]) == up.fetch(source["images"][0])
    # A new server on the same data: only the database record is left of the inference.
    with TestClient(create_app(settings, engine=engine), base_url="http://testserver") as client:
        again = Api(client, up.token)
        second = upscale(again, source, type="hires_fix", strength="0.5")
        assert second["error_code"] == 0, second
        assert again.fetch(second["output"]) == image
        upscaled_only = upscale(again, source, type="hires_fix", strength="0")
        assert not np.array_equal(decode(again.fetch(upscaled_only["output"])), decode(image))


def test_hires_fix_renders_with_the_images_own_seed(up: Api) -> None:
    pair = up.infer(seed=20, num_images=2)
    for index in (0, 1):
        body = upscale(up, pair, index=index, type="hires_fix", strength="0")
        assert body["error_code"] == 0, body
        assert record(up, body["inf_id"]).resolved["seed"] == pair["seeds"][index]


def test_hires_fix_at_strength_zero_is_the_esrgan_2x_upscale(up: Api) -> None:
    source = up.infer(seed=3)
    hires = upscale(up, source, type="hires_fix", strength="0")
    esrgan = upscale(up, source, scale="2")
    assert np.array_equal(decode(up.fetch(hires["output"])), decode(up.fetch(esrgan["output"])))
    # No denoising step runs, so only the upscale is charged.
    assert hires["credit_cost"] == esrgan["credit_cost"]


def test_hires_fix_without_an_upscaler_resamples_with_lanczos(api: Api) -> None:
    source = api.infer(seed=3)
    body = upscale(api, source, type="hires_fix", strength="0")
    assert body["error_code"] == 0, body
    original = Image.open(io.BytesIO(api.fetch(source["images"][0])))
    expected = np.asarray(original.convert("RGB").resize((256, 256), Image.Resampling.LANCZOS))
    assert np.array_equal(decode(api.fetch(body["output"])), expected)
    assert record(api, body["inf_id"]).resolved["upscaler"] is None
