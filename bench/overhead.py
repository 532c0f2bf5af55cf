"""Server overhead: a request to /api/inference over real HTTP against a direct call of the same
pipeline, same model and parameters (demo model, 128x128, 10 steps, one image). Prints both
medians and their ratio (target: at most 1.05).

The two are interleaved in one run so machine load affects both alike. Each call's process CPU
time (every thread: the server's, the engine's, the pipeline's) is printed too: on a shared
machine wall time swings with other work by more than the overhead measured, CPU time much less.
    python bench/overhead.py [--rounds 15]
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
from pathlib import Path

import httpx
import torch
import uvicorn

from daguerre.app import create_app
from daguerre.demo.install import DEMO_MODEL_ID, install_demo_model
from daguerre.engine.diffusers_classes import DPMSolverMultistepScheduler, StableDiffusionPipeline
from daguerre.services.container import open_database
from daguerre.settings import Settings

PROMPT = "a lighthouse at dusk"
SIZE, STEPS, SCALE = 128, 10, 7.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="daguerre-bench-"))
    settings = Settings(data_dir=data_dir, device="cpu" if not torch.cuda.is_available() else "auto")
    database = open_database(settings)
    model = install_demo_model(settings, database.catalog)
    token, _ = database.accounts.create_token(credits=10_000)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)

    engine_device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if engine_device == "cuda" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(model.latest.path, dtype=dtype, safety_checker=None).to(
        engine_device
    )
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    form = {
        "access_token": token,
        "model_id": DEMO_MODEL_ID,
        "prompt": PROMPT,
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "scale": SCALE,
        "num_images": 1,
        "seed": 1,
        "use_default_neg": "false",
        "scheduler": "DPMSolverMultistep",
    }
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)

    def via_server() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        body = client.post("/api/inference", data=form).json()
        elapsed = time.perf_counter() - start, time.process_time() - cpu
        assert body["error_code"] == 0, body
        return elapsed

    # The direct call gets a worker thread of its own too, as the engine's jobs do: torch keeps a
    # thread pool per calling thread, and the comparison should not hinge on which thread it is.
    worker = ThreadPoolExecutor(max_workers=1)

    def direct() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        worker.submit(
            pipe,
            PROMPT,
            width=SIZE,
            height=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=SCALE,
            generator=torch.Generator("cpu").manual_seed(1),
        ).result()
        return time.perf_counter() - start, time.process_time() - cpu

    load_before = os.getloadavg()[0]
    for _ in range(3):  # warm-up: model load, allocator, first HTTP connection
        via_server()
        direct()
    server_times, direct_times = [], []
    for _ in range(args.rounds):
        server_times.append(via_server())
        direct_times.append(direct())
    server.should_exit = True

    def median(times: list[tuple[float, float]], index: int) -> float:
        return statistics.median(pair[index] for pair in times)

    server_median, direct_median = median(server_times, 0), median(direct_times, 0)
    print(
        f"device: {engine_device} ({torch.cuda.get_device_name() if engine_device == 'cuda' else 'CPU'}), "
        f"torch threads: {torch.get_num_threads()}, rounds: {args.rounds}, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"direct pipeline call   median {direct_median * 1000:8.1f} ms, CPU {median(direct_times, 1) * 1000:6.1f} ms")
    print(f"/api/inference (HTTP)  median {server_median * 1000:8.1f} ms, CPU {median(server_times, 1) * 1000:6.1f} ms")
    print(f"ratio server/direct: {server_median / direct_median:.3f}  (target <= 1.05)")
    print(f"CPU time ratio server/direct: {median(server_times, 1) / median(direct_times, 1):.3f}")


if __name__ == "__main__":
    main()
