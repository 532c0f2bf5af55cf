"""Property-based fuzzing of every endpoint of the OpenAPI document (schemathesis), against a real
server process over one keep-alive connection. Every answer is the envelope (or a file, or the
documented 404 for files), never a 5xx, never a traceback, and the connection stays open.

Bounded to about a minute: a fixed number of examples, both valid and invalid by the schema, half
of them with a real token so that they get past authentication. The token holds a few credits,
so the few cheap generations run and the rest stop at the price.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.support.server import LiveServer, live_server

pytestmark = pytest.mark.slow
EXAMPLES = 1000
TIME_BUDGET_S = 90


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("fuzz"), credits=0.5) as running:
        yield running


def check(case: Any, response: requests.Response) -> None:
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, where
    assert "Traceback" not in response.text, where
    if case.path.startswith("/files/"):
        if response.status_code == 404:
            assert response.json() == {"error_code": 1, "message": "file not found"}, where
        else:
            assert response.status_code == 200, where
        return
    assert response.status_code == 200, where
    body = response.json()
    if case.path == "/health":
        assert body["status"] == "ok", where
    else:
        assert body["error_code"] in (0, 1), where
        assert body["error_code"] == 0 or isinstance(body["message"], str), where


def test_every_endpoint_answers_the_envelope_and_keeps_the_connection(server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1))
    pools = session.get_adapter(server.url).poolmanager.pools
    assert session.get(f"{server.url}/health", timeout=30).status_code == 200
    (pool,) = [pools[key] for key in pools.keys()]  # noqa: SIM118 (a urllib3 container, not a dict)
    started = time.monotonic()
    seen: set[str] = set()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, with_token=st.booleans())
    def one_case(case: Any, with_token: bool) -> None:
        if time.monotonic() - started > TIME_BUDGET_S:
            return
        if with_token and isinstance(case.body, dict):
            case.body["access_token"] = server.token
        seen.add(f"{case.method} {case.path}")
        # Sent by this session itself, so that the one pooled connection carries every request.
        response = session.request(**case.as_transport_kwargs(base_url=server.url), timeout=120)
        check(case, response)
        health = session.get(f"{server.url}/health", timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        # One pooled connection all along: the server never dropped it.
        assert pool.num_connections == 1, f"the connection was dropped after {case.method} {case.path}"

    one_case()
    assert {"POST /api/inference", "POST /api/models", "POST /api/upscale", "POST /api/video"} <= seen, seen
    assert "Traceback" not in server.log_text()
    print(json.dumps(sorted(seen)), f"{time.monotonic() - started:.0f} s")
