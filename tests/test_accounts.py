"""Tokens, credits and the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from daguerre.app import create_app
from daguerre.errors import InsufficientCredits, Unauthorized
from daguerre.services.accounts import AccountService, to_milli
from daguerre.services.catalog import Format, NewModel
from daguerre.services.container import open_database
from daguerre.services.pricing import image_cost
from daguerre.settings import Pricing, Settings
from tests.support.accounts import charge_concurrently
from tests.support.api import SMALL, Api, RecordingEngine


@pytest.fixture
def accounts(settings: Settings) -> AccountService:
    return open_database(settings).accounts


def test_tokens_are_stored_hashed(settings: Settings, accounts: AccountService) -> None:
    token, info = accounts.create_token(name="alice", credits=5)
    assert len(token) == 64 and info.prefix == token[:8]
    database = open_database(settings)
    with database.engine.connect() as connection:
        stored = [tuple(row) for row in connection.execute(text("select * from tokens"))]
    assert not any(token in str(value) for row in stored for value in row)
    assert accounts.authenticate(token).name == "alice"
    with pytest.raises(Unauthorized):
        accounts.authenticate(token[:-1] + ("0" if token[-1] != "0" else "1"))
    with pytest.raises(Unauthorized):
        accounts.authenticate("")


def test_charges_never_overdraw_and_say_what_was_needed(accounts: AccountService) -> None:
    _, info = accounts.create_token(credits=1)
    accounts.charge(info.id, to_milli(0.6), "a")
    with pytest.raises(InsufficientCredits, match=r"needs 0\.6, the balance is 0\.4"):
        accounts.charge(info.id, to_milli(0.6), "b")
    assert accounts.balance(info.id) == pytest.approx(0.4)


def test_concurrent_charges_spend_at_most_the_balance(accounts: AccountService) -> None:
    _, info = accounts.create_token(credits=10)
    outcomes = charge_concurrently(accounts, info.id, attempts=25)
    assert outcomes.count(True) == 10
    assert accounts.balance(info.id) == 0
    assert [row.kind for row in accounts.ledger(info.id)].count("charge") == 10


def test_ledger_records_grants_charges_and_refunds(accounts: AccountService) -> None:
    _, info = accounts.create_token(credits=3)
    accounts.charge(info.id, to_milli(1), "inf1")
    accounts.refund(info.id, to_milli(1), "inf1", note="failed")
    accounts.add_credits(info.id, 2)
    rows = accounts.ledger(info.id)
    assert [(r.kind, r.credits, r.reference) for r in rows] == [
        ("grant", 3, ""),
        ("charge", -1, "inf1"),
        ("refund", 1, "inf1"),
        ("grant", 2, ""),
    ]
    assert accounts.balance(info.id) == sum(r.credits for r in rows) == 5


def test_cost_grows_with_pixels_steps_and_images() -> None:
    pricing = Pricing()
    base = image_cost(pricing, 512, 512, 30, 1)
    assert base == to_milli(pricing.image_rate)
    assert image_cost(pricing, 512, 1024, 30, 1) == 2 * base
    assert image_cost(pricing, 512, 512, 15, 1) == base // 2
    assert image_cost(pricing, 512, 512, 30, 4) == 4 * base
    assert image_cost(pricing, 128, 128, 1, 1) == to_milli(pricing.min_image_cost)
    assert image_cost(Pricing(image_rate=2), 512, 512, 30, 1) == 4 * base


def test_a_request_is_charged_its_cost_once(api: Api) -> None:
    before = api.balance()
    body = api.infer(num_images=2, steps=3)
    expected = image_cost(Pricing(), 128, 128, 3, 2) / 1000
    assert body["credit_cost"] == pytest.approx(expected)
    assert api.balance() == pytest.approx(before - expected)


def test_not_enough_credits_is_an_envelope_and_runs_nothing(recorded_api: Api, recorder: RecordingEngine) -> None:
    poor, _ = recorded_api.services.accounts.create_token(credits=0.01)
    body = recorded_api.client.post(
        "/api/inference", data={"access_token": poor, "model_id": "tiny", "prompt": "p"}
    ).json()
    assert body["error_code"] == 1
    assert "not enough credits: this request needs 3" in body["message"]
    assert recorder.jobs == []


def test_failed_work_is_refunded_and_recorded(settings: Settings, tiny_sd15: Path) -> None:
    with TestClient(create_app(settings, engine=RecordingEngine(fail=True))) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        services.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="tiny", title="Tiny"))
        token, info = services.accounts.create_token(credits=10)
        body = client.post("/api/inference", data={"access_token": token, "model_id": "tiny", "prompt": "p"}).json()
        assert body == {"error_code": 1, "message": "generation failed: the engine broke on purpose"}
        assert services.accounts.balance(info.id) == 10
        kinds = [row.kind for row in services.accounts.ledger(info.id)]
        assert kinds == ["grant", "charge", "refund"]
        reference = services.accounts.ledger(info.id)[1].reference
        record = services.inference.inferences.get(reference, info.id)
        assert record.status == "failed" and record.credit_cost == 0


def test_an_inference_is_visible_only_to_its_token(api: Api) -> None:
    body = api.infer()
    owner = api.services.accounts.authenticate(api.token)
    record = api.services.inference.inferences.get(body["inf_id"], owner.id)
    assert record.status == "done" and len(record.outputs) == 1
    _, stranger = api.services.accounts.create_token()
    with pytest.raises(Exception, match="not found"):
        api.services.inference.inferences.get(body["inf_id"], stranger.id)


def test_http_status_setting(tmp_path: Path, tiny_sd15: Path) -> None:
    settings = Settings(data_dir=tmp_path, http_error_status=True)
    with TestClient(create_app(settings, engine=RecordingEngine())) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        token, _ = services.accounts.create_token(credits=0)
        services.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="tiny", title="Tiny"))
        ask = {"model_id": "tiny", "prompt": "p"}
        assert client.post("/api/inference", data={**ask, "access_token": "x"}).status_code == 401
        assert client.post("/api/inference", data={**ask, "access_token": token, "steps": 0}).status_code == 422
        assert client.post("/api/inference", data={**ask, "access_token": token}).status_code == 402
        missing = client.post("/api/inference", data={**ask, "access_token": token, "model_id": "zzz"})
        assert missing.status_code == 404 and missing.json()["error_code"] == 1


def test_the_balance_endpoint_answers_the_callers_balance_only(recorded_api: Api) -> None:
    client, token = recorded_api.client, recorded_api.token
    other, _ = recorded_api.services.accounts.create_token(name="other", credits=7)
    posted = client.post("/api/balance", data={"access_token": token}).json()
    assert posted["error_code"] == 0 and posted["credits"] == pytest.approx(recorded_api.balance())
    assert posted["token_prefix"] == token[: len(posted["token_prefix"])]
    by_header = client.get("/api/balance", headers={"Authorization": f"Bearer {other}"}).json()
    assert by_header == {"error_code": 0, "credits": 7.0, "name": "other", "token_prefix": by_header["token_prefix"]}
    assert client.post("/api/balance", json={"access_token": other}).json()["credits"] == 7.0
    spent = client.post("/api/inference", data={"access_token": other, "model_id": "tiny", "prompt": "p", **SMALL})
    assert spent.json()["error_code"] == 0
    assert client.get(f"/api/balance?access_token={other}").json()["credits"] == pytest.approx(
        7.0 - spent.json()["credit_cost"]
    )
    refused = client.get("/api/balance").json()
    assert refused["error_code"] == 1 and "access_token" in refused["message"]
