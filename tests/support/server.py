"""A real `daguerre serve` process on a loopback port, for tests of what only a real server shows:
its access log, its memory, keep-alive connections."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from daguerre.demo.install import install_demo, install_demo_model
from daguerre.services.container import open_database
from daguerre.settings import Settings
from tests.support.servers import free_port


@dataclass
class LiveServer:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until_healthy(process: subprocess.Popen[bytes], url: str, log: Path, limit_s: float) -> None:
    """Until the server at `url` answers /health; fails with its log if it exits or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    while True:
        assert process.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, f"the server at {url} did not start within {limit_s} s"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


@contextmanager
def live_server(
    data_dir: Path, credits: float = 100.0, env: dict[str, str] | None = None, full_demo: bool = False
) -> Iterator[LiveServer]:
    """Registers the tiny demo model (with `full_demo`, everything `serve --demo` installs: LoRAs,
    ControlNets, upscalers, video models) and a token with `credits`, then starts the server."""
    settings = Settings(data_dir=data_dir)
    database = open_database(settings)
    if full_demo:
        install_demo(settings, database.catalog)
    else:
        install_demo_model(settings, database.catalog)
    token, _ = database.accounts.create_token(name="live", credits=credits)
    database.engine.dispose()
    port = free_port()
    command = [sys.executable, "-m", "daguerre", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    log = Path(tempfile.mkstemp(prefix="daguerre-live-", suffix=".log", dir=data_dir)[1])
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url, log, 120)
        yield LiveServer(url, token, process, log)
    finally:
        process.terminate()
        process.wait(timeout=30)
