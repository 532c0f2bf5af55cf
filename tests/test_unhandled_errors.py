"""What only a real server process shows: inputs that used to end in "internal server error", two
tracebacks in the log and a dropped keep-alive connection; tokens in the access log; the server's
memory under oversized and anonymous bodies."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from tests.support.server import LiveServer, live_server

pytestmark = pytest.mark.slow
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("live-errors")) as running:
        yield running


def json_body(text: str) -> tuple[str, dict[str, str]]:
    return text, {"content-type": "application/json"}


def cases(token: str) -> list[tuple[str, str, str | None, dict[str, str]]]:
    """(method, path, body, headers): each used to answer "internal server error"."""
    found: list[tuple[str, str, str | None, dict[str, str]]] = [
        ("POST", "/api/models", *json_body("[" * 100_000 + "]" * 100_000)),
        ("POST", "/api/inference", *json_body('{"model_id": "demo", "prompt": "p", "access_token": "\\udfff"}')),
        ("GET", "/files/images", None, {}),
        ("GET", "/files/%00", None, {}),
        ("GET", "/files/" + "a" * 300, None, {}),
        ("GET", "/files/images/" + "a" * 300 + ".png", None, {}),
    ]
    for field in ("model_id", "lora", "prompt", "version"):
        body = {"access_token": token, "model_id": "demo", "prompt": "p", field: "\udfff"}
        found.append(("POST", "/api/inference", *json_body(json.dumps(body))))
    found.append(
        ("POST", "/api/upscale", *json_body(json.dumps({"access_token": token, "inf_id": "\udfff", "url": "x"})))
    )
    for url in ("http://127.0.0.1:{port}/files/" + "a" * 300, "http://127.0.0.1:{port}/files/%00.png"):
        body = {"access_token": token, "model_id": "demo", "prompt": "p", "image_url": url}
        found.append(("POST", "/api/video", *json_body(json.dumps(body))))
    return found


def test_bad_input_answers_the_envelope_and_keeps_the_connection(server: LiveServer) -> None:
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    for method, path, body, headers in cases(server.token):
        body = body.replace("{port}", str(address.port)) if body else body
        connection.request(method, path, body=body.encode() if body else None, headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
        label = f"{method} {path[:40]} {(body or '')[:80]}"
        if path.startswith("/files/"):
            assert response.status == 404 and answer == {"error_code": 1, "message": "file not found"}, label
        else:
            assert response.status == 200 and answer["error_code"] == 1, label
            assert "internal server error" not in answer["message"], (label, answer)
        # The same connection answers the next, unrelated call.
        connection.request("GET", "/health")
        health = connection.getresponse()
        assert health.status == 200 and json.loads(health.read())["status"] == "ok", label
    connection.close()
    assert "Traceback" not in server.log_text()


def test_a_query_token_is_accepted_and_never_logged(server: LiveServer) -> None:
    answer = requests.post(f"{server.url}/api/models?access_token={server.token}", timeout=30).json()
    assert answer["error_code"] == 0
    requests.post(f"{server.url}/api/models?x=1&access_token={server.token}", timeout=30)
    requests.get(f"{server.url}/health?access_token={server.token}", timeout=30)
    deadline = time.monotonic() + 5
    while "/health?access_token=***" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.1)
    log = server.log_text()
    assert server.token not in log and server.token[:16] not in log
    assert "/api/models?access_token=*** HTTP/1.1" in log


def stream(total: int, first: bytes = b"", chunk: int = MiB) -> Iterator[bytes]:
    """`total` bytes made on the fly: the test itself never holds the body."""
    yield first
    sent = len(first)
    block = b" " * chunk
    while sent < total:
        yield block[: min(chunk, total - sent)]
        sent += chunk


def test_oversized_and_anonymous_bodies_leave_the_servers_memory_alone(server: LiveServer, tmp_path: Path) -> None:
    process = psutil.Process(server.process.pid)
    # Warm the paths once, so that what they import or allocate for good is not counted.
    requests.post(f"{server.url}/api/models", data=b"{}", headers={"content-type": "application/json"}, timeout=60)
    before = process.memory_info().rss
    multipart = "multipart/form-data; boundary=b"
    file_first = b'--b\r\nContent-Disposition: form-data; name="init_image_file"; filename="a.png"\r\n\r\n'
    sends = [
        # anonymous JSON, declared length and chunked
        ("/api/inference", "application/json", 200 * MiB, b"{", True),
        ("/api/inference", "application/json", 200 * MiB, b"{", False),
        # anonymous multipart, the file before any token
        ("/api/inference", multipart, 200 * MiB, file_first, False),
        # a valid token in the query, a body over the upload limit
        (f"/api/inference?access_token={server.token}", multipart, 100 * MiB, file_first, False),
        (f"/api/inference?access_token={server.token}", "application/json", 100 * MiB, b"{", False),
    ]
    address = urlsplit(server.url)
    answered: list[str] = []
    for path, content_type, size, first, declared in sends:
        headers = {"content-type": content_type}
        if declared:
            headers["content-length"] = str(size)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        try:
            connection.request("POST", path, body=stream(size, first), headers=headers, encode_chunked=not declared)
            answer = json.loads(connection.getresponse().read())
        except OSError:
            continue  # the server may close a connection it will not read the rest of
        finally:
            connection.close()
        assert answer["error_code"] == 1 and "bytes" in answer["message"], answer
        answered.append(path)
    assert answered, "no oversized body got an answer"
    grown = (process.memory_info().rss - before) / MiB
    print(f"{len(answered)} of {len(sends)} answered; the server grew by {grown:.1f} MiB")
    assert grown < 64, f"the server grew by {grown:.0f} MiB"
    assert requests.get(f"{server.url}/health", timeout=30).status_code == 200
