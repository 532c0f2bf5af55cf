"""Bounded input: body sizes and the order in which a body is read and its caller checked, form
limits, prompt limits, Unicode text, every field's message, and the price checked before an
upload is decoded."""

from __future__ import annotations

import asyncio
import io
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import annotated_types
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps
from pydantic import BaseModel
from starlette.requests import Request

from daguerre.api.body import BodyLimits, read_fields
from daguerre.app import create_app
from daguerre.errors import DaguerreError, Unauthorized
from daguerre.protocol.inference import InferenceRequest
from daguerre.protocol.models import ModelsRequest
from daguerre.protocol.upscale import UpscaleRequest
from daguerre.protocol.video import VideoRequest
from daguerre.services.accounts import TokenInfo
from daguerre.services.catalog import Format, NewModel
from daguerre.services.uploads import prepare_image
from daguerre.settings import Settings
from tests.support.api import SMALL, Api, RecordingEngine

MiB = 1024 * 1024


def post_json(api: Api, path: str, body: dict[str, Any]) -> dict[str, Any]:
    # ensure_ascii keeps lone surrogates as \ud... escapes, the way a JSON client sends them.
    response = api.client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


def png_bytes(width: int, height: int, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- item 9: every field of every request model names its real type and range -------------------

ENDPOINTS: dict[type[BaseModel], tuple[str, dict[str, Any]]] = {
    InferenceRequest: ("/api/inference", {"model_id": "tiny", "prompt": "a cat", **SMALL}),
    UpscaleRequest: ("/api/upscale", {"inf_id": "abc", "url": "http://testserver/files/images/x.png"}),
    VideoRequest: ("/api/video", {"model_id": "tiny", "prompt": "a cat"}),
    ModelsRequest: ("/api/models", {}),
}


def real_type(annotation: Any) -> Any:
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) in (Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation


def bounds(model: type[BaseModel], name: str) -> tuple[float | None, float | None]:
    low = high = None
    for meta in model.model_fields[name].metadata:
        if isinstance(meta, annotated_types.Ge):
            low = meta.ge
        if isinstance(meta, annotated_types.Le):
            high = meta.le
    return low, high


def text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def field_cases() -> Iterator[Any]:
    for model, (path, base) in ENDPOINTS.items():
        for name in model.model_fields:
            if name != "access_token":  # authenticated before the fields are read: see below
                yield pytest.param(model, path, base, name, id=f"{model.__name__}.{name}")


@pytest.mark.parametrize(("model", "path", "base", "name"), list(field_cases()))
def test_every_field_names_its_real_type_and_range(
    recorded_api: Api, model: type[BaseModel], path: str, base: dict[str, Any], name: str
) -> None:
    kind = real_type(model.model_fields[name].annotation)
    low, high = bounds(model, name)
    if typing.get_origin(kind) is Literal:
        wrong, out_of_range, expected = "nonsense", None, ["must be one of", *map(str, typing.get_args(kind))]
    elif kind is bool:
        wrong, out_of_range, expected = "maybe", None, ['must be "true" or "false"']
    elif kind in (int, float):
        noun = "a number" if kind is float else "an integer"
        if any(isinstance(m, annotated_types.MultipleOf) for m in model.model_fields[name].metadata):
            noun = "a multiple of"
        wrong, expected = "abc", [f"must be {noun}"]
        if low is not None and high is not None:
            expected.append(f"from {text(low)} to {text(high)}")
        elif low is not None:
            expected.append(f"at least {text(low)}")
        out_of_range = high + 1 if high is not None else low - 1 if low is not None else None
    else:
        assert kind is str, f"{model.__name__}.{name}: a field type this test does not know"
        wrong, out_of_range, expected = {"a": 1}, None, ["must be a string"]
    for value in (wrong, out_of_range):
        if value is None:
            continue
        body = post_json(recorded_api, path, {"access_token": recorded_api.token, **base, name: value})
        assert body["error_code"] == 1
        assert body["message"].startswith(f"invalid {name} "), body["message"]
        for part in expected:
            assert part in body["message"], (value, body["message"])
    if kind is str:
        body = post_json(recorded_api, path, {"access_token": recorded_api.token, **base, name: "ok\udfffok"})
        assert body["message"] == f"invalid {name}: must be valid Unicode text (lone surrogate at position 2)"
    assert recorded_api.balance() == 1000


def test_video_ranges_name_integers(recorded_api: Api) -> None:
    body = recorded_api.post("/api/video", model_id="tiny", prompt="p", num_frames="3819")
    assert body["message"] == "invalid num_frames '3819': must be an integer from 1 to 81"
    body = recorded_api.post("/api/video", model_id="tiny", prompt="p", steps="51")
    assert body["message"] == "invalid steps '51': must be an integer from 1 to 50"


@pytest.mark.parametrize("bad", ["\udfff", 12, ["x"], {"a": "b"}, "x" * 5000])
def test_a_bad_access_token_of_any_shape_is_refused(recorded_api: Api, bad: object) -> None:
    body = post_json(recorded_api, "/api/inference", {"access_token": bad, "model_id": "tiny", "prompt": "p"})
    assert body == {"error_code": 1, "message": "invalid access_token"}


def test_quoted_values_are_short(recorded_api: Api) -> None:
    body = recorded_api.post("/api/inference", model_id="tiny", prompt="p", width="9" * 100_000)
    assert len(body["message"]) < 300 and "100000 characters" in body["message"]


# ---- items 3 and 10: prompts are bounded and proper Unicode, before anything is charged -----------


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("path", ["/api/inference", "/api/video"])
def test_prompts_over_the_limit_are_refused_before_the_charge(
    recorded_api: Api, recorder: RecordingEngine, field: str, path: str
) -> None:
    fields = {"model_id": "tiny", "prompt": "p", **SMALL} if path == "/api/inference" else {"model_id": "tiny"}
    body = recorded_api.post(path, **{**fields, "prompt": "p", field: "a" * 8001})
    assert body == {
        "error_code": 1,
        "message": f"invalid {field}: 8001 characters, more than the limit of 8000",
        "field": field,
    }
    assert recorder.jobs == [] and recorded_api.balance() == 1000


def test_a_prompt_at_the_limit_is_served(recorded_api: Api, recorder: RecordingEngine) -> None:
    body = recorded_api.post("/api/inference", model_id="tiny", prompt="a " * 4000, **SMALL)
    assert body["error_code"] == 0, body
    assert len(recorder.jobs) == 1


def test_the_prompt_limit_is_a_setting(settings: Settings, tiny_sd15: Path) -> None:
    limited = settings.model_copy(update={"max_prompt_chars": 10})
    with TestClient(create_app(limited, engine=RecordingEngine())) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        services.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="tiny", title="Tiny"))
        token, _ = services.accounts.create_token(credits=10)
        body = client.post("/api/inference", data={"access_token": token, "model_id": "tiny", "prompt": "x" * 11})
    assert body.json()["message"] == "invalid prompt: 11 characters, more than the limit of 10"


def test_a_lone_surrogate_in_the_prompt_is_refused_and_costs_nothing(
    recorded_api: Api, recorder: RecordingEngine
) -> None:
    body = post_json(
        recorded_api, "/api/inference", {"access_token": recorded_api.token, "model_id": "tiny", "prompt": "a \udfff"}
    )
    assert body["message"] == "invalid prompt: must be valid Unicode text (lone surrogate at position 2)"
    assert recorder.jobs == [] and recorded_api.balance() == 1000


# ---- item 4: limits and the order of reading ------------------------------------------------------


def test_a_json_body_over_the_form_limit_is_refused(recorded_api: Api) -> None:
    big = json.dumps({"access_token": recorded_api.token, "model_id": "tiny", "prompt": "p", "pad": "x" * MiB})
    response = recorded_api.client.post("/api/inference", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert response.json() == {"error_code": 1, "message": f"the body is {len(big)} bytes, over the limit of {MiB}"}


def test_oversized_bodies_answer_413_with_http_error_status(settings: Settings) -> None:
    strict = settings.model_copy(update={"http_error_status": True})
    with TestClient(create_app(strict, engine=RecordingEngine())) as client:
        response = client.post(
            "/api/models", content=b"{" + b" " * (MiB + 1), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413 and response.json()["error_code"] == 1


class Channel:
    """An ASGI receive channel that hands out a body in chunks and counts what was taken."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.taken = 0

    async def receive(self) -> dict[str, Any]:
        chunk = self.chunks[self.taken] if self.taken < len(self.chunks) else b""
        self.taken += 1
        return {"type": "http.request", "body": chunk, "more_body": self.taken < len(self.chunks)}


def request_with(channel: Channel, content_type: str, query: str = "", length: int | None = None) -> Request:
    headers = [(b"content-type", content_type.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": query.encode(), "headers": headers}
    return Request(scope, channel.receive)  # type: ignore[arg-type]


LIMITS = BodyLimits(form_bytes=64 * 1024, body_bytes=1 * MiB, form_fields=8)
CHECKED: list[object] = []


async def only_good(token: object) -> TokenInfo:
    CHECKED.append(token)
    if token != "good":
        raise Unauthorized("invalid access_token")
    from datetime import datetime

    return TokenInfo(1, "t", "good", 1.0, datetime.now())


def read(request: Request) -> tuple[TokenInfo, dict[str, Any], dict[str, Any]]:
    return asyncio.run(read_fields(request, LIMITS, only_good))


def multipart(*parts: tuple[str, bytes, str | None]) -> list[bytes]:
    chunks = []
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        chunks += [data[i : i + 16 * 1024] for i in range(0, len(data), 16 * 1024)]
        chunks.append(b"\r\n")
    chunks.append(b"--b--\r\n")
    return chunks


def test_a_bad_token_in_the_query_is_refused_before_the_body_is_read() -> None:
    channel = Channel([b"x" * 1024] * 100)
    with pytest.raises(Unauthorized):
        read(request_with(channel, "multipart/form-data; boundary=b", query="access_token=bad"))
    assert channel.taken == 0


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read() -> None:
    channel = Channel([b"x" * 1024] * 100)
    with pytest.raises(DaguerreError, match="over the limit"):
        read(request_with(channel, "application/json", query="access_token=good", length=LIMITS.form_bytes + 1))
    assert channel.taken == 0


def test_an_anonymous_body_is_read_no_further_than_the_form_limit() -> None:
    # The file before the token: the reader gives up once the form limit is passed.
    channel = Channel(multipart(("init_image_file", b"x" * 512 * 1024, "a.png"), ("access_token", b"good", None)))
    with pytest.raises(DaguerreError, match="before its access_token"):
        read(request_with(channel, "multipart/form-data; boundary=b"))
    assert channel.taken * 16 * 1024 <= LIMITS.form_bytes + 32 * 1024


def test_a_token_sent_before_the_file_unlocks_the_full_limit() -> None:
    channel = Channel(multipart(("access_token", b"good", None), ("init_image_file", b"x" * 512 * 1024, "a.png")))
    token, fields, files = read(request_with(channel, "multipart/form-data; boundary=b"))
    assert token.prefix == "good" and fields["access_token"] == "good"
    assert len(asyncio.run(files["init_image_file"].read())) == 512 * 1024


def test_a_bad_token_in_a_multipart_body_stops_the_reading() -> None:
    CHECKED.clear()
    channel = Channel(multipart(("access_token", b"bad", None), ("init_image_file", b"x" * 512 * 1024, "a.png")))
    with pytest.raises(Unauthorized):
        read(request_with(channel, "multipart/form-data; boundary=b"))
    # The token is known once its part ends (the next boundary has arrived); the 512 KiB after it are not read.
    assert CHECKED == ["bad"] and channel.taken < 8 < len(channel.chunks)


def test_chunked_bodies_without_a_length_are_cut_off_too() -> None:
    channel = Channel([b" " * 1024] * 1000)
    with pytest.raises(DaguerreError, match=f"over the limit of {LIMITS.form_bytes}"):
        read(request_with(channel, "application/json", query="access_token=good"))
    assert channel.taken <= LIMITS.form_bytes // 1024 + 1


def test_two_different_tokens_are_refused() -> None:
    channel = Channel([b"access_token=other"])
    with pytest.raises(Unauthorized, match="two different access_tokens"):
        read(request_with(channel, "application/x-www-form-urlencoded", query="access_token=good"))


def test_the_readme_multipart_upload_still_works(recorded_api: Api, recorder: RecordingEngine) -> None:
    response = recorded_api.client.post(
        "/api/inference",
        data={"access_token": recorded_api.token, "model_id": "tiny", "prompt": "p", **SMALL},
        files={"init_image_file": ("a.png", png_bytes(1500, 1000), "image/png")},
    )
    assert response.json()["error_code"] == 0, response.json()
    assert len(recorder.jobs) == 1


# ---- item 8: malformed multipart is the envelope with HTTP 200 ------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type", "message"),
    [
        (b"--b\r\nfoo", "multipart/form-data", "invalid multipart body: Missing boundary in multipart."),
        (
            b"".join(multipart(*[(f"f{i}", b"v", None) for i in range(65)])),
            "multipart/form-data; boundary=b",
            "invalid multipart body: Too many fields. Maximum number of fields is 64.",
        ),
        (
            b"".join(multipart(("prompt", b"x" * (MiB + 1), None))),
            "multipart/form-data; boundary=b",
            "invalid multipart body: Part exceeded maximum size of 1024KB.",
        ),
        (
            b"".join(multipart(*[(f"f{i}", b"v", f"{i}.png") for i in range(5)])),
            "multipart/form-data; boundary=b",
            "invalid multipart body: Too many files. Maximum number of files is 4.",
        ),
    ],
)
def test_malformed_multipart_is_an_envelope_with_http_200(
    recorded_api: Api, content: bytes, content_type: str, message: str
) -> None:
    response = recorded_api.client.post(
        f"/api/inference?access_token={recorded_api.token}", content=content, headers={"content-type": content_type}
    )
    assert response.status_code == 200
    assert response.json() == {"error_code": 1, "message": message}


# ---- item 5: the price is checked before an upload is read or decoded ----------------------------


def test_a_caller_who_cannot_pay_gets_no_upload_decoded(recorded_api: Api, recorder: RecordingEngine) -> None:
    poor, _ = recorded_api.services.accounts.create_token(credits=0)
    not_an_image = b"\x89PNG\r\n\x1a\n" + b"\x00" * 1000  # decoding it would fail with another message
    response = recorded_api.client.post(
        "/api/inference",
        data={"access_token": poor, "model_id": "tiny", "prompt": "p", **SMALL},
        files={"init_image_file": ("a.png", not_an_image, "image/png")},
    )
    assert response.json() == {
        "error_code": 1,
        "message": "not enough credits: this request needs 0.05, the balance is 0",
    }
    assert recorder.jobs == []


def test_the_quote_follows_lcm_pricing(recorded_api: Api) -> None:
    # LCM: 6 steps by default and half price: four 512x512 images cost 4 x 0.5 x 6/30 / 2 = 0.2 (at 30
    # steps without LCM, 2.0).
    service = recorded_api.services.inference
    poor = recorded_api.services.accounts.authenticate(recorded_api.token)
    cheap = InferenceRequest.model_validate(
        {"access_token": "t", "model_id": "tiny", "prompt": "p", "lcm": "true", "width": 512, "height": 512}
    )
    assert asyncio.run(service.check_affordable(poor, cheap)) is None
    broke = type(poor)(poor.id, poor.name, poor.prefix, 0.04, poor.created_at)
    with pytest.raises(DaguerreError, match=r"needs 0\.2, the balance is 0\.04"):
        asyncio.run(service.check_affordable(broke, cheap))


def test_large_uploads_are_reduced_before_the_fit_with_the_same_result() -> None:
    rng = np.random.default_rng(0)
    # Smooth content (a gradient plus broad noise), as a photo is at the scale of the reduction.
    small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    source = Image.fromarray(small).resize((1600, 1200), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    prepared = np.asarray(Image.open(io.BytesIO(prepare_image(buffer.getvalue(), 128, 96, 40_000_000))))
    direct = np.asarray(ImageOps.fit(source, (128, 96), method=Image.Resampling.LANCZOS))
    assert prepared.shape == (96, 128, 3)
    assert np.abs(prepared.astype(int) - direct.astype(int)).mean() < 2
