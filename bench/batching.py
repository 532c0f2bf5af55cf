"""Request batching: images per second for concurrent clients over real HTTP, with batching on
and off, side by side in one run (demo model; target: on/off at least 1.5 on a CPU).

Each client has its own token and sends its requests one after another (num_images 1, a prompt
and seed of its own); the clients run at once. The server is this process's app on a live
uvicorn, its engine switched between arms: `max_batch_size` (1: batching off), and the CPU pool
(`cpu_threads` 0: PNG encoding and prompt encoding on the worker between jobs, not overlapped),
and with --window-ms an arm whose batches wait that long for mates.
Arms are interleaved round by round, so machine load falls on all alike; medians are printed.
    python bench/batching.py [--clients 8] [--requests 3] [--rounds 3] [--size 128] [--steps 10]
                             [--batch-sizes 1,8] [--window-ms MS] [--no-overlap-arm]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
import uvicorn

from daguerre.app import create_app
from daguerre.demo.install import DEMO_MODEL_ID, install_demo_model
from daguerre.engine.runtime.local import DEFAULT_CPU_THREADS, LocalEngine
from daguerre.services.container import open_database
from daguerre.settings import Settings

TARGET = 1.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Arm:
    name: str
    max_batch_size: int
    cpu_threads: int
    window_ms: float = 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="requests each client sends per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-sizes", default="1,8", help="max_batch_size of each batching arm; 1 is off")
    parser.add_argument(
        "--window-ms", type=float, default=0.0, help="adds an arm: the largest batch size, this worker.batch_window_ms"
    )
    parser.add_argument("--no-overlap-arm", action="store_true", help="skip the arm without the CPU pool")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="daguerre-bench-"))
    settings = Settings(data_dir=data_dir, device="cpu" if not torch.cuda.is_available() else "auto")
    database = open_database(settings)
    install_demo_model(settings, database.catalog)
    tokens = [database.accounts.create_token(credits=100_000)[0] for _ in range(args.clients)]

    engine = LocalEngine(cache_dir=settings.cache_dir, device=settings.device)
    port = free_port()
    app = create_app(settings, engine=engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)

    arms = [
        Arm(f"batching {'off' if size == 1 else f'on (max {size})'}", size, DEFAULT_CPU_THREADS)
        for size in (int(part) for part in args.batch_sizes.split(","))
    ]
    if args.window_ms:
        largest = max(arm.max_batch_size for arm in arms)
        name = f"on (max {largest}), {args.window_ms:g} ms window"
        arms.append(Arm(name, largest, DEFAULT_CPU_THREADS, args.window_ms))
    if not args.no_overlap_arm:
        arms.append(Arm("batching off, no CPU pool", 1, 0))
    pool = engine.cpu

    def configure(arm: Arm) -> None:
        engine.max_batch_size = arm.max_batch_size
        engine.cpu = pool if arm.cpu_threads else None
        engine.batch_window_s = arm.window_ms / 1000

    def client(index: int, round_: int, latencies: list[float]) -> int:
        images = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            for request in range(args.requests):
                form = {
                    "access_token": tokens[index],
                    "model_id": DEMO_MODEL_ID,
                    "prompt": f"a lighthouse at dusk, client {index}",
                    "width": args.size,
                    "height": args.size,
                    "steps": args.steps,
                    "num_images": 1,
                    "seed": 1000 * (round_ + 1) + 10 * index + request,
                    "use_default_neg": "false",
                    "scheduler": "DPMSolverMultistep",
                }
                start = time.perf_counter()
                body = http.post("/api/inference", data=form).json()
                latencies.append(time.perf_counter() - start)
                assert body["error_code"] == 0, body
                images += len(body["images"])
        return images

    def measure(arm: Arm, round_: int) -> tuple[float, float]:
        configure(arm)
        latencies: list[float] = []
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as clients:
            made = sum(clients.map(lambda index: client(index, round_, latencies), range(args.clients)))
        return made / (time.perf_counter() - start), statistics.median(latencies)

    load_before = os.getloadavg()
    measure(arms[0], -1)  # warm-up: model load, first connections
    rates: dict[str, list[float]] = {arm.name: [] for arm in arms}
    latency: dict[str, list[float]] = {arm.name: [] for arm in arms}
    for round_ in range(args.rounds):
        for arm in arms:
            rate, median_latency = measure(arm, round_)
            rates[arm.name].append(rate)
            latency[arm.name].append(median_latency)
    server.should_exit = True
    load_after = os.getloadavg()

    print(
        f"device: {engine.device}, torch threads: {torch.get_num_threads()}, clients: {args.clients} x "
        f"{args.requests} requests, rounds: {args.rounds}, {args.size}x{args.size}, {args.steps} steps, "
        f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    for arm in arms:
        print(
            f"{arm.name:28s} {statistics.median(rates[arm.name]):6.2f} images/s   "
            f"median request {statistics.median(latency[arm.name]) * 1000:7.0f} ms"
        )
    off = statistics.median(rates[arms[0].name])
    for arm in arms[1:]:
        ratio = statistics.median(rates[arm.name]) / off
        target = f"  (target >= {TARGET})" if arm.max_batch_size > 1 else ""
        print(f"ratio {arm.name} / {arms[0].name}: {ratio:.2f}{target}")


if __name__ == "__main__":
    main()
