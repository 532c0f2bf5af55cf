"""The server's own path: what a request costs besides the generation, with an engine that
answers at once (so nothing but HTTP, authentication, the charge, the job's records, its events
and storage is measured), for a fresh token and for one with a long history (--history past
jobs in the database), interleaved in one run. Prints the median wall time and the server's CPU
time per request of each, and their ratio (target: close to 1, a token's history must not make
its requests dearer).

The server runs in its own process, so its CPU time is its alone.
    python bench/server_path.py [--requests 300] [--history 100000]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from PIL import Image
from sqlalchemy import insert

from daguerre.app import create_app
from daguerre.db.tables import Inference
from daguerre.engine.client import EngineClient, JobHandle
from daguerre.engine.jobs import EngineStatus, Finished, ImagesResult, Job, Queued, Started
from daguerre.services.catalog import Format, NewModel
from daguerre.services.container import open_database
from daguerre.settings import Settings

BODY = {"model_id": "m", "prompt": "a lighthouse at dusk", "width": 128, "height": 128, "steps": 10, "num_images": 1}


class InstantEngine(EngineClient):
    """Answers every job at once with a 1x1 PNG: the engine's cost taken out of the measure."""

    def __init__(self) -> None:
        buffer = io.BytesIO()
        Image.new("RGB", (1, 1)).save(buffer, format="PNG")
        self.png = buffer.getvalue()

    async def start(self) -> None:
        return None

    async def close(self, grace_s: float | None = None) -> None:
        return None

    async def health(self) -> EngineStatus:
        return EngineStatus(device="none", dtype="none", queued=0, loaded_models=())

    def cancel(self, job_id: str) -> bool:
        return False

    async def submit(self, job_id: str, job: Job, owner: str, *, readmitted: bool = False) -> JobHandle:
        handle = JobHandle(job_id, lambda _job_id: False)
        images = (self.png,) * len(getattr(job, "seeds", (0,)))
        for event in (Queued(0), Started(), Finished(ImagesResult(images))):
            handle.push(event)
        return handle


def serve(data_dir: Path, port: int) -> None:
    """The server process: the app on the instant engine."""
    import uvicorn

    uvicorn.run(create_app(Settings(data_dir=data_dir), engine=InstantEngine()), port=port, log_level="warning")


def setup(data_dir: Path, history: int) -> tuple[str, str]:
    """A model, a fresh token, and a token with `history` finished jobs; both funded."""
    database = open_database(Settings(data_dir=data_dir))
    model = data_dir / "model"
    model.mkdir()
    database.catalog.add(NewModel(path=model, format=Format.DIFFUSERS, id="m", title="m"))
    fresh, _ = database.accounts.create_token(name="fresh", credits=1e6)
    old, info = database.accounts.create_token(name="old", credits=1e6)
    now = datetime.now(UTC)
    rows = [
        {"id": f"past{i}", "token_id": info.id, "kind": "image", "status": "done", "created_at": now, "queued_at": now}
        for i in range(history)
    ]
    with database.sessions.begin() as session:
        for start in range(0, len(rows), 5000):
            session.execute(insert(Inference), rows[start : start + 5000])
    database.engine.dispose()
    return fresh, old


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="timed requests per token")
    parser.add_argument("--history", type=int, default=100_000, help="past jobs of the long-history token")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    data_dir = Path(tempfile.mkdtemp(prefix="daguerre-bench-"))
    fresh, old = setup(data_dir, args.history)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(data_dir), "--port", str(port)])
    wall: dict[str, list[float]] = {"fresh": [], "history": []}
    cpu = {"fresh": 0.0, "history": 0.0}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(600):
                try:
                    client.get("/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            for token in (fresh, old) * 10:  # warm-up
                assert client.post("/api/inference", data={**BODY, "access_token": token}).json()["error_code"] == 0
            for _ in range(args.requests):
                for name, token in (("fresh", fresh), ("history", old)):
                    used, start = cpu_seconds(server.pid), time.perf_counter()
                    answer = client.post("/api/inference", data={**BODY, "access_token": token}).json()
                    wall[name].append(time.perf_counter() - start)
                    cpu[name] += cpu_seconds(server.pid) - used
                    assert answer["error_code"] == 0, answer
    finally:
        server.terminate()
        server.wait()
    median = {name: statistics.median(times) * 1000 for name, times in wall.items()}
    per_request = {name: total / args.requests * 1000 for name, total in cpu.items()}
    print(f"{args.requests} requests per token, interleaved; the history token has {args.history} past jobs")
    print(f"fresh token:   median {median['fresh']:.2f} ms, server CPU {per_request['fresh']:.2f} ms per request")
    print(f"history token: median {median['history']:.2f} ms, server CPU {per_request['history']:.2f} ms per request")
    ratios = median["history"] / median["fresh"], per_request["history"] / per_request["fresh"]
    print(f"ratio history/fresh: wall {ratios[0]:.3f}, CPU {ratios[1]:.3f}")


if __name__ == "__main__":
    main()
