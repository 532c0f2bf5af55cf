"""Queueing, CORS, output files, the OpenAPI document and the engine boundary."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from daguerre.engine.jobs import Finished, TextToImageJob
from daguerre.engine.runtime.local import LocalEngine
from daguerre.errors import ServerBusy
from daguerre.services.inference import model_spec
from tests.support.api import Api


def test_a_full_queue_answers_busy_at_once(api: Api, engine: LocalEngine) -> None:
    model = api.services.catalog.get("tiny")
    job = TextToImageJob(model_spec(model, model.latest), "p", "", 128, 128, 4, 7.5, "DDIM", (1,))
    engine_limit, engine._max_queue = engine._max_queue, 1

    async def two_at_once() -> tuple[object, object]:
        await engine.start()
        first = await engine.submit("first", job, "a")
        try:
            await engine.submit("second", job, "a")
        except ServerBusy as exc:
            second: object = exc
        events = [event async for event in first.events()]
        await engine.close()
        return events[-1], second

    try:
        first, second = asyncio.run(two_at_once())
    finally:
        engine._max_queue = engine_limit
    assert isinstance(first, Finished) and isinstance(second, ServerBusy)
    assert "server busy" in second.message


def test_busy_envelope_costs_nothing(api: Api, engine: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_max_queue", 0)
    before = api.balance()
    body = api.infer()
    assert body["error_code"] == 1 and "server busy" in body["message"]
    assert api.balance() == before


def test_cors_lets_browsers_call_the_api(api: Api) -> None:
    origin = {"Origin": "https://app.example"}
    preflight = api.client.options("/api/inference", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "https://app.example")
    answer = api.client.post("/api/models", data={"access_token": api.token}, headers=origin)
    assert answer.headers["access-control-allow-origin"] in ("*", "https://app.example")


def test_output_urls_are_unguessable_and_files_stay_inside_storage(api: Api) -> None:
    body = api.infer(num_images=2)
    names = [url.rsplit("/", 1)[1].removesuffix(".png") for url in body["images"]]
    assert all(len(name) >= 32 for name in names)  # 24 random bytes, base64url
    assert names[0] != names[1]
    for probe in ("/files/images/../../daguerre.db", "/files/..%2Fdaguerre.db", "/files/images/nothing.png"):
        answer = api.client.get(probe)
        assert answer.status_code == 404 and answer.json()["error_code"] == 1


def test_public_url_setting_sets_the_image_base(api: Api) -> None:
    api.client.app.state.settings.public_url = "https://images.example.com/"  # type: ignore[attr-defined]
    try:
        body = api.infer()
    finally:
        api.client.app.state.settings.public_url = None  # type: ignore[attr-defined]
    assert body["images"][0].startswith("https://images.example.com/files/images/")


def test_unexpected_errors_never_leak_a_traceback(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.services.catalog, "list", broken)
    as_a_client_sees_it = TestClient(api.client.app, raise_server_exceptions=False)
    body = as_a_client_sees_it.post("/api/models", data={"access_token": api.token}).json()
    assert body["error_code"] == 1 and "secret" not in body["message"] and "Traceback" not in body["message"]


def test_the_http_layer_does_not_import_torch() -> None:
    code = (
        "import sys, daguerre.app, daguerre.api.routes.inference, daguerre.api.routes.models,"
        " daguerre.api.routes.upscale, daguerre.api.routes.video, daguerre.services.container;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_openapi_documents_the_contract(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    body = spec["paths"]["/api/inference"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/x-www-form-urlencoded", "multipart/form-data", "application/json"}
    width = body["application/json"]["schema"]["properties"]["width"]
    assert (width["default"], width["minimum"], width["maximum"], width["multipleOf"]) == (512, 128, 1536, 8)
    assert "ErrorResponse" in spec["components"]["schemas"]
