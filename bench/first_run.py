"""A newcomer's first five minutes: `daguerre serve --demo` on a fresh data dir until /health
answers, a second start on the same data dir, and the contract's default request (512x768, 30
steps, guidance 7.5, the default scheduler and negative prompt, one image) on the demo model and on
the topology-exact tiny model the tests use, both registered on one server. Prints seconds and
the ratios.

Each request is timed twice: cold (the model's first load included, as a first click is) and warm.
The demo model's warm request runs before and after the exact model's, so machine load shifts
both alike; the exact model's takes minutes on a CPU, hence one of each.
    python bench/first_run.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

PROMPT = "a lighthouse at dusk"
EXACT_ID = "tiny-exact"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_demo(data_dir: Path, threads: int | None) -> Iterator[tuple[str, float, str]]:
    """Starts `daguerre serve --demo`; yields its URL, the seconds until /health answered, and
    what it printed by then."""
    port = free_port()
    log = data_dir.parent / f"{data_dir.name}-{port}.log"
    command = [sys.executable, "-m", "daguerre", "serve", "--demo", "--port", str(port), "--data-dir", str(data_dir)]
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as sink:
        start = time.perf_counter()
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        while True:
            assert process.poll() is None, log.read_text()
            assert time.perf_counter() - start < 600, "the server did not start in 10 minutes"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, time.perf_counter() - start, log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=60)


def register_exact_model(data_dir: Path) -> None:
    """The tests' topology-exact tiny SD 1.5 model, next to the demo model."""
    from daguerre.quiet import quiet_third_party

    quiet_third_party()
    from daguerre.demo.tiny_models import build_tiny_sd15
    from daguerre.services.catalog import Format, NewModel
    from daguerre.services.container import open_database
    from daguerre.settings import Settings

    settings = Settings(data_dir=data_dir)
    database = open_database(settings)
    folder = build_tiny_sd15(settings.models_dir / "tiny-exact-sd15")
    database.catalog.add(NewModel(folder, Format.DIFFUSERS, "Tiny SD 1.5, exact topology", id=EXACT_ID))
    database.engine.dispose()


def default_request(url: str, token: str, model_id: str) -> float:
    """The contract's defaults but one image (num_images defaults to 4)."""
    start = time.perf_counter()
    body = httpx.post(
        f"{url}/api/inference",
        data={"access_token": token, "model_id": model_id, "prompt": PROMPT, "num_images": 1, "seed": 1},
        timeout=1800,
    ).json()
    elapsed = time.perf_counter() - start
    assert body["error_code"] == 0, body
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="warm demo requests, split before and after")
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS for the servers (default: unset, torch takes one per core)"
    )
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="daguerre-first-run-")) / "data"

    with serve_demo(data_dir, args.threads) as (_, first_start, printed):
        pass
    register_exact_model(data_dir)
    with serve_demo(data_dir, args.threads) as (url, second_start, _):
        token = (data_dir / "demo-token").read_text().strip()
        demo_cold = default_request(url, token, "demo")
        warm = [default_request(url, token, "demo") for _ in range(args.rounds // 2 + args.rounds % 2)]
        exact_cold = default_request(url, token, EXACT_ID)
        exact_warm = default_request(url, token, EXACT_ID)
        warm += [default_request(url, token, "demo") for _ in range(args.rounds // 2)]
    demo_warm = statistics.median(warm)

    cpu = os.cpu_count()
    load = os.getloadavg()[0]
    threads = args.threads or "unset"
    print(f"machine: {cpu} CPU cores, load average at the end {load:.2f}; OMP_NUM_THREADS {threads}")
    print(f"what the first start printed ({len(printed.splitlines())} lines):")
    print("  | " + "\n  | ".join(printed.splitlines()))
    print()
    print("| what | seconds | ratio |")
    print("| --- | --- | --- |")
    print(f"| first `serve --demo` (fresh data dir) to /health | {first_start:.1f} | |")
    ratio = f"{second_start / first_start:.2f} of the first"
    print(f"| second start (same data dir) to /health | {second_start:.1f} | {ratio} |")
    print(f"| default request, demo model, cold (load included) | {demo_cold:.1f} | |")
    print(f"| default request, demo model, warm (median of {len(warm)}) | {demo_warm:.1f} | |")
    print(f"| default request, exact tiny model, cold | {exact_cold:.1f} | {exact_cold / demo_cold:.1f}x the demo's |")
    print(f"| default request, exact tiny model, warm | {exact_warm:.1f} | {exact_warm / demo_warm:.1f}x the demo's |")


if __name__ == "__main__":
    main()
