"""GET /metrics and the JSON logs: what each family counts, read back through Prometheus' own parser.

Metrics live in the process-wide registry that every app of the test session shares, so each test
compares a scrape after its requests with one before them.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import torch
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from daguerre.app import create_app
from daguerre.engine.runtime.local import LocalEngine
from daguerre.engine.runtime.model_cache import ModelCache
from daguerre.metrics import JsonFormatter
from daguerre.settings import MetricsSettings, Settings
from tests.support.api import SMALL, Api, RecordingEngine, register
from tests.support.server import live_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_requests_are_counted_by_route_template(recorded_api: Api) -> None:
    client = recorded_api.client
    before = scrape(client)
    for _ in range(3):
        assert client.get("/health").status_code == 200
    for name in ("gone-1", "gone-2"):
        assert client.get(f"/files/images/{name}.png").status_code == 404
    assert client.get("/no/such/path-42").status_code == 404
    recorded_api.infer()
    after = scrape(client)

    requests_total = "daguerre_http_requests_total"
    assert moved(before, after, requests_total, method="GET", route="/health", status="200") == 3
    assert moved(before, after, requests_total, method="GET", route="/files/{key:path}", status="404") == 2
    assert moved(before, after, requests_total, method="GET", route="unmatched", status="404") == 1
    assert moved(before, after, requests_total, method="POST", route="/api/inference", status="200") == 1
    # The scrape before this one, counted once it had answered.
    assert moved(before, after, requests_total, method="GET", route="/metrics", status="200") == 1
    count = "daguerre_http_request_duration_seconds_count"
    assert moved(before, after, count, method="GET", route="/health") == 3
    # Concrete paths never become labels.
    routes = {dict(labels).get("route") for _, labels in after}
    assert not any("gone" in str(route) or "path-42" in str(route) for route in routes)


def test_a_generation_loads_its_model_once(api: Api, engine: LocalEngine, tiny_sd15: Path) -> None:
    # A model id of its own, so that no earlier test of the session has it resident.
    register(api, "checkpoint", tiny_sd15, "metrics-tiny")
    before = scrape(api.client)
    api.infer(model_id="metrics-tiny")
    loaded = scrape(api.client)
    api.infer(model_id="metrics-tiny")
    after = scrape(api.client)

    assert moved(before, loaded, "daguerre_model_loads_total", cache="model") == 1
    assert moved(before, loaded, "daguerre_model_load_seconds_count", cache="model") == 1
    assert moved(loaded, after, "daguerre_model_loads_total", cache="model") == 0
    assert moved(before, after, "daguerre_jobs_ended_total", kind="image", status="done") == 2
    assert moved(before, after, "daguerre_jobs_submitted_total", kind="image") == 2
    assert moved(before, after, "daguerre_job_duration_seconds_count", kind="image", status="done") == 2
    cache = engine.cache
    assert value(after, "daguerre_model_cache_used_bytes", cache="model") == cache.used_bytes() > 0
    assert value(after, "daguerre_model_cache_budget_bytes", cache="model") == cache.budget_bytes
    assert value(after, "daguerre_model_cache_entries", cache="model") == len(cache.keys())


def test_evictions_and_residency_follow_the_cache() -> None:
    before = parse(generate_latest(REGISTRY).decode())
    layer_bytes = 4 * (16 * 16 + 16)  # a float32 Linear(16, 16)
    cache = ModelCache(budget_bytes=layer_bytes, name="auxiliary")
    cache.get("a", lambda: torch.nn.Linear(16, 16))
    cache.get("a", lambda: torch.nn.Linear(16, 16))
    cache.get("b", lambda: torch.nn.Linear(16, 16))  # evicts a: the budget holds one
    after = parse(generate_latest(REGISTRY).decode())

    assert moved(before, after, "daguerre_model_loads_total", cache="auxiliary") == 2
    assert moved(before, after, "daguerre_model_evictions_total", cache="auxiliary") == 1
    assert value(after, "daguerre_model_cache_used_bytes", cache="auxiliary") == layer_bytes
    assert value(after, "daguerre_model_cache_budget_bytes", cache="auxiliary") == layer_bytes
    assert value(after, "daguerre_model_cache_entries", cache="auxiliary") == 1


def test_credits_charged_and_refunded(recorded_api: Api, recorder: RecordingEngine) -> None:
    client = recorded_api.client
    before = scrape(client)
    cost = recorded_api.infer()["credit_cost"]
    recorder.fail = True
    failed = recorded_api.infer()
    assert failed["error_code"] == 1 and "broke on purpose" in failed["message"]
    after = scrape(client)

    assert moved(before, after, "daguerre_credits_charged_total") == pytest.approx(2 * cost)
    assert moved(before, after, "daguerre_credits_refunded_total") == pytest.approx(cost)
    assert moved(before, after, "daguerre_jobs_ended_total", kind="image", status="done") == 1
    assert moved(before, after, "daguerre_jobs_ended_total", kind="image", status="failed") == 1
    # Every family of the lifecycle and the caches is there before its first event.
    for name in (
        "daguerre_queue_depth",
        "daguerre_denoising_step_seconds_count",
        "daguerre_job_queue_wait_seconds_count",
    ):
        assert any(sample == name for sample, _ in after), name


@contextmanager
def app_with(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, engine=RecordingEngine())) as client:
        yield client


def test_the_metrics_token(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, metrics=MetricsSettings(token=SecretStr("scrape-secret")))
    with app_with(settings) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-secret"}):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 401 and response.json()["error_code"] == 1, headers
            assert "Authorization: Bearer" in response.json()["message"]
        response = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert response.status_code == 200 and "daguerre_http_requests_total" in response.text
    assert "scrape-secret" not in repr(settings)


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    def health_count() -> float:
        samples = parse(generate_latest(REGISTRY).decode())
        return value(samples, "daguerre_http_requests_total", method="GET", route="/health", status="200")

    with app_with(Settings(data_dir=tmp_path, metrics=MetricsSettings(enabled=False))) as client:
        before = health_count()
        assert client.get("/metrics").status_code == 404
        assert client.get("/health").status_code == 200
        assert health_count() == before


@contextmanager
def json_lines(logger_name: str) -> Iterator[io.StringIO]:
    """What `logger_name` writes at INFO, through JsonFormatter."""
    logger = logging.getLogger(logger_name)
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield sink
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_json_log_lines_carry_the_jobs_inf_id(recorded_api: Api, recorder: RecordingEngine) -> None:
    with json_lines("daguerre") as sink:
        good = recorded_api.infer()
        recorder.fail = True
        recorded_api.infer()
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    ended = [line for line in lines if line["logger"] == "daguerre.services.jobs"]
    assert [line["message"].split()[3] for line in ended] == ["done", "failed"]
    assert ended[0]["inf_id"] == good["inf_id"] in ended[0]["message"] and ended[0]["level"] == "INFO"
    assert len(ended[1]["inf_id"]) == 20 and ended[1]["inf_id"] != good["inf_id"]
    assert "broke on purpose" in ended[1]["message"]
    assert all(set(line) >= {"time", "level", "logger", "message"} for line in lines)


@pytest.mark.slow
def test_a_json_logging_server(tmp_path: Path) -> None:
    with live_server(tmp_path, env={"DAGUERRE_LOG_FORMAT": "json"}) as server:
        assert requests.get(f"{server.url}/health?access_token={server.token}", timeout=30).status_code == 200
        fields = {"access_token": server.token, "model_id": "demo", "prompt": "a cat", **SMALL}
        body = requests.post(f"{server.url}/api/inference", data=fields, timeout=120).json()
        assert body["error_code"] == 0, body
        deadline = time.monotonic() + 10
        while "/api/inference" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()[-2000:]
            time.sleep(0.1)
        log = server.log_text()
    # serve's banner is printed and the model loader's progress bars drawn, not logged; every log
    # line is an object.
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert server.token not in log
    access = [line for line in lines if line["logger"] == "uvicorn.access" and "access_token" in line["path"]]
    assert {"method": "GET", "path": "/health?access_token=***", "status": 200}.items() <= access[0].items()
    assert any(line["logger"] == "uvicorn.error" and "startup complete" in line["message"] for line in lines)
    ended = [line for line in lines if line["logger"] == "daguerre.services.jobs"]
    assert len(ended) == 1 and ended[0]["inf_id"] == body["inf_id"]
