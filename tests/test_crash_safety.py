"""Jobs and credits survive crashes and shutdowns, on a real `daguerre serve` process over loopback.

kill -9 with one job running and others queued, then a restart on the same data dir: every job
runs and completes once (the interrupted one again, to the same bytes), and each is charged once.
SIGTERM with one request running and one queued: the process exits within the grace period and
every charge is resolved. A synchronous client that goes away has its job cancelled and refunded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from daguerre.db.tables import Inference
from daguerre.services.catalog import Format, NewModel
from daguerre.services.container import Database, open_database
from daguerre.services.jobs import CLIENT_GONE
from daguerre.settings import Settings
from tests.support.servers import free_port

pytestmark = pytest.mark.slow

CREDITS = 100.0
# Long on a CPU (tens of seconds): the tests stop the server while it runs, never wait for it.
LONG = {"model_id": "tiny", "prompt": "p", "width": 256, "height": 256, "steps": 50, "num_images": 1}


@pytest.fixture
def data(tmp_path: Path, tiny_sd15: Path) -> Iterator[tuple[Settings, Database, str, int]]:
    settings = Settings(data_dir=tmp_path / "data")
    database = open_database(settings)
    database.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="tiny", title="Tiny"))
    token, info = database.accounts.create_token(credits=CREDITS)
    yield settings, database, token, info.id
    database.engine.dispose()


class Server:
    def __init__(self, settings: Settings, **env: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        command = [sys.executable, "-m", "daguerre", "serve", "--port", port, "--data-dir", str(settings.data_dir)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.process.kill()
        pytest.fail("the server did not start")

    def output(self) -> str:
        return self.process.stdout.read() if self.process.stdout else ""

    def post_in_background(self, token: str, answers: list[dict[str, Any]], **fields: Any) -> threading.Thread:
        def post() -> None:
            body = {"access_token": token, **LONG, **fields}
            try:
                answers.append(httpx.post(f"{self.url}/api/inference", data=body, timeout=60).json())
            except httpx.TransportError as exc:
                answers.append({"transport_error": str(exc)})

        thread = threading.Thread(target=post)
        thread.start()
        return thread

    def wait_for_queue(self, count: int) -> None:
        deadline = time.monotonic() + 30
        while httpx.get(f"{self.url}/health", timeout=5).json()["queued"] < count:
            assert time.monotonic() < deadline, f"{count} jobs never reached the engine"
            time.sleep(0.05)


def statuses(database: Database) -> list[tuple[str, str]]:
    with database.engine.connect() as connection:
        return [(row.status, row.error) for row in connection.execute(select(Inference.status, Inference.error))]


def job_status(server: Server, token: str, inf_id: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/api/jobs/{inf_id}", params={"access_token": token}).json()
    return body


def wait_for(server: Server, token: str, inf_id: str, states: tuple[str, ...], limit_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while (body := job_status(server, token, inf_id)).get("status") not in states:
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    return body


def test_kill_9_with_jobs_queued_and_running_then_restart_completes_each_once(
    data: tuple[Settings, Database, str, int],
) -> None:
    settings, database, token, token_id = data
    server = Server(settings)
    # The first runs for seconds on a CPU (it is killed while it runs); the others wait behind it.
    running = {**LONG, "width": 128, "height": 128, "steps": 30, "seed": 5}
    fields = [
        running,
        {**LONG, "width": 128, "height": 128, "steps": 2},
        {**LONG, "width": 128, "height": 128, "steps": 3},
    ]
    ids = []
    try:
        for extra in fields:
            answer = httpx.post(f"{server.url}/api/inference", data={"access_token": token, "async": "true", **extra})
            ids.append(answer.json()["inf_id"])
        wait_for(server, token, ids[0], ("running",), 30)
        assert [job_status(server, token, inf_id)["status"] for inf_id in ids[1:]] == ["queued", "queued"]
    finally:
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
    charged = CREDITS - database.accounts.balance(token_id)
    assert charged > 0

    restarted = Server(settings)
    try:
        finals = [wait_for(restarted, token, inf_id, ("done", "failed", "cancelled")) for inf_id in ids]
        assert [final["status"] for final in finals] == ["done"] * 3, finals
        assert [final["attempts"] for final in finals] == [2, 1, 1]
        # The interrupted job ran again with its pinned seed: the bytes a fresh request gives.
        fresh = httpx.post(f"{restarted.url}/api/inference", data={"access_token": token, **running}, timeout=120)
        again = httpx.get(finals[0]["images"][0]).content
        assert again == httpx.get(fresh.json()["images"][0]).content
        spent = CREDITS - database.accounts.balance(token_id)
        assert spent == pytest.approx(charged + fresh.json()["credit_cost"])
        kinds = [row.kind for row in database.accounts.ledger(token_id)]
        assert kinds == ["grant", "charge", "charge", "charge", "charge"]  # each once, no refund
    finally:
        restarted.process.terminate()
        restarted.process.wait(timeout=30)


def test_a_synchronous_client_that_disconnects_has_its_job_cancelled_and_refunded(
    data: tuple[Settings, Database, str, int],
) -> None:
    settings, database, token, token_id = data
    server = Server(settings)
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(f"{server.url}/api/inference", data={"access_token": token, **LONG}, timeout=3)
        deadline = time.monotonic() + 30
        while statuses(database) != [("cancelled", CLIENT_GONE)]:
            assert time.monotonic() < deadline, statuses(database)
            time.sleep(0.1)
        assert database.accounts.balance(token_id) == CREDITS
        assert [row.kind for row in database.accounts.ledger(token_id)] == ["grant", "charge", "refund"]
        assert httpx.get(f"{server.url}/health").json()["queued"] == 0  # the worker is free again
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)


def test_sigterm_fails_queued_work_at_once_and_the_running_job_after_the_grace(
    data: tuple[Settings, Database, str, int],
) -> None:
    settings, database, token, token_id = data
    grace = 2
    server = Server(settings, DAGUERRE_SHUTDOWN_GRACE_S=str(grace))
    answers: list[dict[str, Any]] = []
    clients = [server.post_in_background(token, answers)]
    server.wait_for_queue(1)
    clients.append(server.post_in_background(token, answers))
    server.wait_for_queue(2)  # one running, one waiting behind it
    assert database.accounts.balance(token_id) < CREDITS
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=grace + 15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        pytest.fail(f"the server was still alive {grace + 15} s after SIGTERM:\n{server.output()}")
    elapsed = time.monotonic() - started
    for client in clients:
        client.join(timeout=30)
    assert elapsed < grace + 10, elapsed
    messages = sorted(answer.get("message", str(answer)) for answer in answers)
    assert len(messages) == 2
    assert "did not finish within the grace period" in messages[0], messages
    assert "did not start" in messages[1], messages
    assert sorted(status for status, _ in statuses(database)) == ["failed", "failed"]
    assert database.accounts.balance(token_id) == CREDITS
    assert sorted(row.kind for row in database.accounts.ledger(token_id)) == [
        "charge",
        "charge",
        "grant",
        "refund",
        "refund",
    ]


def test_sigterm_lets_the_running_job_finish_within_the_grace(data: tuple[Settings, Database, str, int]) -> None:
    settings, database, token, token_id = data
    server = Server(settings, DAGUERRE_SHUTDOWN_GRACE_S="60")
    answers: list[dict[str, Any]] = []
    client = server.post_in_background(token, answers, steps=6)  # a few seconds on a CPU
    server.wait_for_queue(1)
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        pytest.fail(f"the server did not exit after its last job:\n{server.output()}")
    client.join(timeout=30)
    assert answers[0].get("error_code") == 0, answers
    assert statuses(database) == [("done", "")]
    assert database.accounts.balance(token_id) == CREDITS - answers[0]["credit_cost"]
