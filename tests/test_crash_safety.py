"""Credits survive crashes and shutdowns, on a real `daguerre serve` process over loopback.

kill -9 mid-generation, then a restart on the same data dir: the interrupted record is failed and
refunded exactly once. SIGTERM with one job running and one queued: the process exits within the
grace period and every charge is resolved.
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
from daguerre.services.records import INTERRUPTED
from daguerre.settings import Settings
from tests.test_live_server import free_port

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


def test_kill_9_mid_generation_then_restart_refunds_exactly_once(data: tuple[Settings, Database, str, int]) -> None:
    settings, database, token, token_id = data
    server = Server(settings)
    answers: list[dict[str, Any]] = []
    client = server.post_in_background(token, answers)
    try:
        server.wait_for_queue(1)
        assert statuses(database) == [("running", "")]
        assert database.accounts.balance(token_id) < CREDITS  # charged while it runs
    finally:
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        client.join(timeout=30)
    assert "transport_error" in answers[0]
    assert statuses(database) == [("running", "")]  # what the crash left behind

    restarted = Server(settings)  # serving means the startup reconciliation has run
    try:
        assert statuses(database) == [("failed", INTERRUPTED)]
        assert database.accounts.balance(token_id) == CREDITS
        ledger = database.accounts.ledger(token_id)
        assert [row.kind for row in ledger] == ["grant", "charge", "refund"]
        assert ledger[1].credits == -ledger[2].credits and ledger[1].reference == ledger[2].reference
    finally:
        restarted.process.terminate()
        restarted.process.wait(timeout=30)
    assert len(database.accounts.ledger(token_id)) == 3  # a second start refunds nothing more


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
