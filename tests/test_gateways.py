"""Several gateways on one Postgres: each job runs once, and a gateway's death loses nothing.

Two apps on one database claim jobs apart (SELECT ... FOR UPDATE SKIP LOCKED, claims fenced by the
gateway id); a real `daguerre serve` process killed with SIGKILL while it runs one job and holds
two queued: the other gateway, alive and heartbeating, leaves them alone while the lease holds,
then takes them over and runs each once; every charge stays, and nothing is refunded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from daguerre.app import create_app
from daguerre.db.tables import Inference
from daguerre.engine.runtime.local import LocalEngine
from daguerre.services.catalog import Format, NewModel
from daguerre.services.container import Database, open_database
from daguerre.services.records import InferenceStore
from daguerre.settings import GatewaySettings, Settings
from tests.support.api import SMALL, RecordingEngine
from tests.support.server import wait_until_healthy
from tests.support.servers import free_port

LEASE_S, HEARTBEAT_S = 1.5, 0.2
CREDITS = 100.0


def gateway_settings(tmp_path: Path, postgres_url: str, name: str) -> Settings:
    gateway = GatewaySettings(id=name, lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S)
    return Settings(data_dir=tmp_path / name, database_url=postgres_url, gateway=gateway)


@pytest.fixture
def database(tmp_path: Path, postgres_url: str, tiny_sd15: Path) -> Iterator[Database]:
    database = open_database(gateway_settings(tmp_path, postgres_url, "setup"))
    with database.sessions.begin() as session:  # each test starts from no jobs (the cluster is per module)
        session.execute(update(Inference).values(status="done", claimed_by=None))
    if not any(model.id == "tiny" for model in database.catalog.list()):
        database.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, id="tiny", title="Tiny"))
    yield database
    database.engine.dispose()


def rows(database: Database, ids: list[str]) -> list[tuple[str, str | None, int]]:
    with database.engine.connect() as connection:
        query = select(Inference.id, Inference.status, Inference.claimed_by, Inference.attempts)
        found = {row.id: (row.status, row.claimed_by, row.attempts) for row in connection.execute(query)}
    return [found[inf_id] for inf_id in ids]


def test_two_gateways_run_each_job_once_and_claim_abandoned_jobs_apart(
    tmp_path: Path, postgres_url: str, database: Database
) -> None:
    engines = {"a": RecordingEngine(), "b": RecordingEngine()}
    token, info = database.accounts.create_token(credits=CREDITS)
    apps = {
        name: create_app(gateway_settings(tmp_path, postgres_url, name), engine) for name, engine in engines.items()
    }
    with TestClient(apps["a"]) as a, TestClient(apps["b"]) as b:
        fields = {"access_token": token, "model_id": "tiny", "prompt": "p", **SMALL, "async": "true"}
        ids = [a.post("/api/inference", data=fields).json()["inf_id"] for _ in range(3)]
        ids.append(b.post("/api/inference", data=fields).json()["inf_id"])
        time.sleep(3 * HEARTBEAT_S)  # both gateways beat meanwhile: neither takes the other's jobs
        assert [status for status, _, _ in rows(database, ids)] == ["done"] * 4
        assert (len(engines["a"].jobs), len(engines["b"].jobs)) == (3, 1)
        # Any gateway answers for any job (files from shared storage: tests/test_s3.py).
        status = b.get(f"/api/jobs/{ids[0]}", params={"access_token": token}).json()
        assert status["status"] == "done" and status["attempts"] == 1
    kinds = [entry.kind for entry in database.accounts.ledger(info.id)]
    assert kinds == ["grant", "charge", "charge", "charge", "charge"]

    # Jobs nobody holds (a dead gateway's, its lease long past): two gateways claiming at once
    # take each exactly once, between them.
    abandoned = [f"gone{i:02d}" for i in range(40)]
    stores = [InferenceStore(database.sessions, gateway, LEASE_S) for gateway in ("dead", "x", "y")]
    for inf_id in abandoned:
        stores[0].open(inf_id, info.id, "image", "tiny", "1", {}, 0)
    with database.sessions.begin() as session:
        session.execute(
            update(Inference).where(Inference.id.in_(abandoned)).values(lease_until=datetime(2020, 1, 1, tzinfo=UTC))
        )
    claimed: dict[str, list[str]] = {}

    def claim(store: InferenceStore) -> None:
        claimed[store.gateway] = [record.id for record in store.claim()]

    threads = [threading.Thread(target=claim, args=(store,)) for store in stores[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(claimed["x"] + claimed["y"]) == abandoned
    assert {claimer for _, claimer, _ in rows(database, abandoned)} <= {"x", "y"}
    # The dead gateway can no longer move them: its claim is gone.
    assert not stores[0].start(abandoned[0])
    assert not stores[0].end(abandoned[0], "failed", "late", owned=True)
    assert stores[0].renew() == set()


class Gateway:
    """A real `daguerre serve` on loopback, on the shared database."""

    def __init__(self, settings: Settings) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "DAGUERRE_DATABASE_URL": str(settings.database_url),
            "DAGUERRE_GATEWAY__ID": settings.gateway_id,
            "DAGUERRE_GATEWAY__LEASE_S": str(LEASE_S),
            "DAGUERRE_GATEWAY__HEARTBEAT_S": str(HEARTBEAT_S),
        }
        command = [sys.executable, "-m", "daguerre", "serve", "--port", port, "--data-dir", str(settings.data_dir)]
        self.log = settings.data_dir.parent / f"{settings.gateway_id}.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        wait_until_healthy(self.process, self.url, self.log, 90)


def wait_for(check: Any, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow
def test_a_gateway_killed_with_jobs_queued_leaves_them_to_another_that_runs_each_once(
    tmp_path: Path, postgres_url: str, database: Database, engine: LocalEngine
) -> None:
    token, info = database.accounts.create_token(credits=CREDITS)
    a = Gateway(gateway_settings(tmp_path, postgres_url, "gw-a"))
    with TestClient(create_app(gateway_settings(tmp_path, postgres_url, "gw-b"), engine)) as b:
        try:
            # The first runs for seconds on a CPU (four 128 px images, 50 steps: about 4 s on the
            # 2-core machine, twice the window below), so A is killed while it runs; the others
            # wait behind it.
            long_job = {"width": 128, "height": 128, "steps": 50, "num_images": 4}
            jobs = [long_job, {**SMALL, "steps": 2, "num_images": 1}, {**SMALL, "steps": 3, "num_images": 1}]
            ids = []
            for extra in jobs:
                body = {"access_token": token, "model_id": "tiny", "prompt": "p", "async": "true"}
                ids.append(httpx.post(f"{a.url}/api/inference", data={**body, **extra}, timeout=30).json()["inf_id"])
            claimed_at = time.monotonic()  # each claim's lease counts from here, renewed by A's heartbeat
            wait_for(lambda: rows(database, ids)[0][0] == "running", 60, "the first job never started")
            # Longer than the lease, B beating all along: A's heartbeat keeps its jobs its own.
            time.sleep(max(0.0, claimed_at + LEASE_S + 2 * HEARTBEAT_S - time.monotonic()))
            held = [(status, claimer) for status, claimer, _ in rows(database, ids)]
            assert held == [("running", "gw-a"), ("queued", "gw-a"), ("queued", "gw-a")], held
        finally:
            a.process.send_signal(signal.SIGKILL)
            a.process.wait(timeout=10)
        killed_at = time.monotonic()
        charged = CREDITS - database.accounts.balance(info.id)
        assert charged > 0
        wait_for(lambda: rows(database, ids)[0][1] == "gw-b", 10 * LEASE_S, "B never took A's jobs over")
        assert time.monotonic() - killed_at > LEASE_S - 2 * HEARTBEAT_S  # not before the lease ran out
        wait_for(lambda: all(status == "done" for status, _, _ in rows(database, ids)), 90, str(rows(database, ids)))
        assert [(claimer, attempts) for _, claimer, attempts in rows(database, ids)] == [
            ("gw-b", 2),  # it was running when A died: it runs once more
            ("gw-b", 1),
            ("gw-b", 1),
        ]
        status = b.get(f"/api/jobs/{ids[0]}", params={"access_token": token}).json()
        assert status["status"] == "done" and len(status["images"]) == 4
        assert b.get(urlsplit(status["images"][0]).path).status_code == 200
    assert CREDITS - database.accounts.balance(info.id) == pytest.approx(charged)
    kinds = [entry.kind for entry in database.accounts.ledger(info.id)]
    assert kinds == ["grant", "charge", "charge", "charge"]  # each charged once, none refunded
