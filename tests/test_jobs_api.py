"""Async jobs through the HTTP API on the real engine and the tiny models: the async answer,
status, Server-Sent Events (order, resumption), cancel (running and queued), the per-token
limit, the jobs list, and no token reaching another's jobs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from daguerre.engine.runtime.local import LocalEngine
from daguerre.settings import Settings, WebhookSettings
from tests.support.api import SMALL, Api, register, serve
from tests.support.video import FAST
from tests.support.webhooks import webhook_receiver

WAIT_S = 60
LONG = {"steps": 50}  # seconds on a CPU: long enough to act on while it runs


def submit(api: Api, path: str = "/api/inference", **fields: Any) -> dict[str, Any]:
    if path == "/api/inference":
        fields = {"model_id": api.model_id, "prompt": "a cat", **SMALL, **fields}
    return api.post(path, **{"async": "true", **fields})


def status(api: Api, inf_id: str, token: str | None = None) -> dict[str, Any]:
    response = api.client.get(f"/api/jobs/{inf_id}", params={"access_token": token or api.token})
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def wait_until(api: Api, inf_id: str, *states: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while (body := status(api, inf_id))["status"] not in states:
        assert time.monotonic() < deadline, body
        time.sleep(0.02)
    return body


def events(api: Api, inf_id: str, headers: dict[str, str] | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """The job's Server-Sent Events as (id, event, data), parsed as a browser does."""
    url = f"/api/jobs/{inf_id}/events"
    with api.client.stream("GET", url, params={"access_token": api.token}, headers=headers, timeout=WAIT_S) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in answer.iter_lines():
            if not line:
                if "data" in fields:
                    yield fields.get("id", ""), fields.get("event", "message"), json.loads(fields["data"])
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")


def ledger_notes(api: Api) -> list[tuple[str, str]]:
    token = api.services.accounts.authenticate(api.token)
    return [(row.kind, row.note) for row in api.services.accounts.ledger(token.id)]


def test_async_answers_at_once_and_the_status_then_holds_the_answer(api: Api) -> None:
    before = api.balance()
    accepted = submit(api, seed=7)
    assert set(accepted) == {"error_code", "inf_id", "status", "queue_position"}
    assert accepted["error_code"] == 0 and accepted["status"] == "queued" and accepted["queue_position"] >= 0
    assert api.balance() < before  # charged at once
    done = wait_until(api, accepted["inf_id"], "done")
    synchronous = api.infer(seed=7)
    assert set(synchronous) - {"error_code"} <= set(done)
    assert done["seeds"] == synchronous["seeds"] == [7]
    assert api.fetch(done["images"][0]) == api.fetch(synchronous["images"][0])
    assert done["attempts"] == 1 and done["queue_wait_s"] >= 0 and done["run_s"] > 0


def test_inference_events_in_order_and_resumable(api: Api) -> None:
    inf_id = submit(api, steps=3)["inf_id"]
    seen = list(events(api, inf_id))
    names = [name for _, name, _ in seen]
    assert names[0] == "queued" and "started" in names
    assert names[names.index("started") :] == ["started", "progress", "progress", "progress", "finished"]
    assert [data["step"] for _, name, data in seen if name == "progress"] == [1, 2, 3]
    last_id, _, final = seen[-1]
    assert last_id == "end" and final["status"] == "done" and len(final["images"]) == 1
    # Resuming after the second progress event replays only what followed; an ended job replays
    # its final event; a client that has it gets nothing more.
    resumed = list(events(api, inf_id, {"Last-Event-ID": seen[-3][0]}))
    assert [name for _, name, _ in resumed] == ["finished"]
    assert list(events(api, inf_id, {"Last-Event-ID": "end"})) == []


def test_upscale_and_video_events(
    settings: Settings, api: Api, tiny_upscalers: dict[int, Path], tiny_video_models: dict[str, Path]
) -> None:
    register(api, "upscaler", tiny_upscalers[2], "x2")
    register(api, "video", tiny_video_models["t2v"], "wan")
    source = api.infer()
    upscale = submit(api, "/api/upscale", inf_id=source["inf_id"], url=source["images"][0])
    names = [name for _, name, _ in events(api, upscale["inf_id"])]
    assert names[-3:] == ["started", "progress", "finished"]  # one 128 px tile
    final = status(api, upscale["inf_id"])
    assert (final["width"], final["height"]) == (256, 256) and final["output"].endswith(".png")

    clip = submit(api, "/api/video", model_id="wan", prompt="waves", **{**FAST, "steps": 2})
    seen = list(events(api, clip["inf_id"]))
    names = [name for _, name, _ in seen]
    assert names[names.index("started") :] == ["started", "progress", "progress", "finished"]
    assert seen[-1][2]["video_url"].endswith(".mp4")


def test_cancelling_a_running_job_stops_it_within_a_step_and_refunds(api: Api) -> None:
    before = api.balance()
    inf_id = submit(api, **LONG)["inf_id"]
    after_cancel: list[str] = []
    cancelled: dict[str, Any] = {}
    for _, name, data in events(api, inf_id):
        if cancelled:
            after_cancel.append(name)
        elif name == "progress" and data["step"] == 2:
            cancelled = api.post(f"/api/jobs/{inf_id}/cancel")
    assert cancelled["status"] == "cancelled" and cancelled["credit_cost"] == 0
    assert after_cancel.count("progress") <= 1 and after_cancel[-1] == "cancelled", after_cancel
    assert api.balance() == before
    assert ledger_notes(api)[-1] == ("refund", "cancelled by the client; the credits were refunded")
    again = api.post(f"/api/jobs/{inf_id}/cancel")
    assert again["error_code"] == 1 and "already ended (cancelled)" in again["message"]


def test_cancelling_a_queued_job_removes_it_from_the_queue(api: Api) -> None:
    before = api.balance()
    running = submit(api, **LONG)["inf_id"]
    waiting = submit(api)
    assert waiting["queue_position"] == 1
    wait_until(api, running, "running")
    cancelled = api.post(f"/api/jobs/{waiting['inf_id']}/cancel")
    assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None
    assert api.services.engine.cancel(running)  # the long one is not needed
    wait_until(api, running, "cancelled")
    assert api.balance() == before


def test_another_tokens_jobs_are_unreachable(api: Api) -> None:
    inf_id = submit(api)["inf_id"]
    stranger, _ = api.services.accounts.create_token(credits=1)
    for token in (stranger, api.token):
        target = inf_id if token == stranger else "x" * 20  # a stranger's id, and an unknown one
        answers = [
            api.client.get(f"/api/jobs/{target}", params={"access_token": token}).json(),
            api.client.get(f"/api/jobs/{target}/events", params={"access_token": token}).json(),
            api.client.post(f"/api/jobs/{target}/cancel", data={"access_token": token}).json(),
            api.client.get("/api/jobs", params={"access_token": token, "before": target}).json(),
        ]
        messages = [answer.get("message", "").replace(target, "ID") for answer in answers]
        assert all(answer["error_code"] == 1 for answer in answers), answers
        if token == stranger:
            stranger_messages = messages
        else:
            assert messages == stranger_messages
    assert api.client.get("/api/jobs", params={"access_token": stranger}).json()["jobs"] == []
    wait_until(api, inf_id, "done")


def test_the_per_token_limit_refuses_before_any_charge(tmp_path: Path, engine: Any, tiny_sd15: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", max_queued_per_token=1)
    with serve(settings, engine, tiny_sd15, credits=100) as api:
        first = submit(api, **LONG)["inf_id"]
        balance = api.balance()
        refused = submit(api)
        assert refused["error_code"] == 1 and "max_queued_per_token 1" in refused["message"]
        assert api.balance() == balance
        api.post(f"/api/jobs/{first}/cancel")


def test_a_private_webhook_url_is_refused_before_any_charge(api: Api) -> None:
    before = api.balance()
    body = submit(api, webhook_url="http://127.0.0.1:9/hook")
    assert body["error_code"] == 1 and body["message"].startswith("invalid webhook_url")
    bad = submit(api, **{"async": "maybe"})
    assert bad["error_code"] == 1 and bad["message"].startswith('invalid async \'maybe\': must be "true" or "false"')
    assert api.balance() == before
    assert api.services.accounts.ledger(api.services.accounts.authenticate(api.token).id)[-1].kind == "grant"


def test_a_finished_job_calls_its_webhook_signed_and_retries_after_500(
    tmp_path: Path, engine: LocalEngine, tiny_sd15: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        webhooks=WebhookSettings(allow_private_hosts=["127.0.0.1"], initial_backoff_s=0.05, max_backoff_s=0.1),
    )
    with webhook_receiver([500, 200]) as receiver, serve(settings, engine, tiny_sd15, credits=100) as api:
        inf_id = submit(api, webhook_url=receiver.url)["inf_id"]
        done = wait_until(api, inf_id, "done")
        first, second = receiver.wait_for(2)
        token_id = api.services.accounts.authenticate(api.token).id
        secret = api.services.accounts.webhook_secret(token_id)
        for call in (first, second):
            sent = Webhook(secret).verify(call.body, call.headers)
            assert sent["inf_id"] == inf_id and sent["status"] == "done" and sent["images"] == done["images"]
        assert first.headers["webhook-id"] == second.headers["webhook-id"]  # one delivery, retried
        deadline = time.monotonic() + WAIT_S
        while len(attempts := status(api, inf_id)["webhook_attempts"]) < 2:
            assert time.monotonic() < deadline, attempts
            time.sleep(0.02)
        assert [a["status_code"] for a in attempts] == [500, 200] and attempts[-1]["delivered"]


def test_the_jobs_list_pages_newest_first(api: Api) -> None:
    made = [api.infer(seed=i)["inf_id"] for i in range(5)]
    first = api.client.get("/api/jobs", params={"access_token": api.token, "limit": 2}).json()
    assert [job["inf_id"] for job in first["jobs"]] == made[::-1][:2]
    second = api.client.get(
        "/api/jobs", params={"access_token": api.token, "limit": 2, "before": first["next_before"]}
    ).json()
    assert [job["inf_id"] for job in second["jobs"]] == made[::-1][2:4]
    last = api.client.get("/api/jobs", params={"access_token": api.token, "before": second["next_before"]}).json()
    assert [job["inf_id"] for job in last["jobs"]] == made[:1] and last["next_before"] is None
    assert all(job["status"] == "done" and job["images"] for job in first["jobs"])
    too_many = api.client.get("/api/jobs", params={"access_token": api.token, "limit": 101}).json()
    assert too_many["message"] == "invalid limit '101': must be an integer from 1 to 100"


@pytest.mark.parametrize("path", ["/api/inference", "/api/upscale", "/api/video"])
def test_every_post_endpoint_documents_the_job_options(api: Api, path: str) -> None:
    schema = api.client.get("/openapi.json").json()["paths"][path]["post"]["requestBody"]["content"]
    properties = schema["application/x-www-form-urlencoded"]["schema"]["properties"]
    assert {"async", "webhook_url"} <= set(properties)
