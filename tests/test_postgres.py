"""The same services on PostgreSQL: a Postgres URL works unchanged.

Runs against a throwaway cluster when the PostgreSQL server binaries are installed (Debian's
postgresql package); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from daguerre.app import create_app
from daguerre.services.catalog import Format, NewModel
from daguerre.services.container import open_database
from daguerre.settings import Settings
from tests.support.accounts import charge_concurrently
from tests.support.api import RecordingEngine


def _as_postgres_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL server binaries are not installed")
    # Not under pytest's temp root: that is private to this user, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="daguerre-pg-"))
    folder.chmod(0o777)
    data = folder / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_as = _as_postgres_user()
    subprocess.run(
        [*run_as, "initdb", "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*run_as, "pg_ctl", "-D", str(data), "-o", options, "-w", "-l", str(folder / "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_concurrent_charges_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    accounts = open_database(Settings(data_dir=tmp_path, database_url=postgres_url)).accounts
    _, info = accounts.create_token(credits=8)
    results = charge_concurrently(accounts, info.id, attempts=20)
    assert results.count(True) == 8 and accounts.balance(info.id) == 0


def test_a_request_end_to_end_on_postgres(tmp_path: Path, postgres_url: str, tiny_sd15: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=postgres_url)
    with TestClient(create_app(settings, engine=RecordingEngine())) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        services.catalog.add(NewModel(path=tiny_sd15, format=Format.DIFFUSERS, title="Tiny", tags=["pg"]))
        token, info = services.accounts.create_token(credits=10)
        (model,) = services.catalog.list()
        body = client.post("/api/inference", data={"access_token": token, "model_id": model.id, "prompt": "p"}).json()
        assert body["error_code"] == 0 and len(body["images"]) == 4
        assert services.inference.inferences.get(body["inf_id"], info.id).status == "done"
        listed = client.post("/api/models", data={"access_token": token}).json()["models"]
        assert listed[0]["tags"] == ["pg"]
