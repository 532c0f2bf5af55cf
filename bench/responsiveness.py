"""Responsiveness: p50/p99 latency of `GET /health`, `GET /api/jobs/{id}` and `POST /api/models`
against a real `daguerre serve --demo` process, with the worker idle and while it runs back-to-back
generations; printed side by side with the ratio busy/idle (target: p99 ratio at most 2, i.e. the
event loop never waits on the worker). Idle and busy windows alternate, so the load of whatever
else runs on the machine falls on both alike; the load average is printed with the figures.

Busy: feeder threads keep two async generations in flight (demo model, 128x128, 30 steps each),
each followed over Server-Sent Events as a client would, so the worker never waits for work and the
loop also streams their progress. The probes are sequential, one keep-alive connection, endpoints
interleaved and paced over the phase so they sample every part of several generations.
    python bench/responsiveness.py [--requests 300] [--seconds 40] [--rounds 4] [--steps 30] [--size 128]
The server gets this process's environment: `OMP_NUM_THREADS=1` runs it with one torch thread.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

TARGET = 2.0
FEEDERS = 2  # generations in flight: one running, one queued behind it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(data_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    command = [sys.executable, "-m", "daguerre", "serve", "--demo", "--port", str(port), "--data-dir", str(data_dir)]
    with (data_dir / "server.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{(data_dir / 'server.log').read_text()[-4000:]}")
        if time.monotonic() > deadline:
            process.terminate()
            raise SystemExit("the server did not start in 180 s")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)


def percentile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def measure(probes: dict[str, Callable[[], None]], requests: int, seconds: float) -> dict[str, list[float]]:
    """Each probe `requests` times, endpoints interleaved, paced to spread over `seconds` (never
    longer than twice that); latencies in ms."""
    times: dict[str, list[float]] = {name: [] for name in probes}
    interval = seconds / (requests * len(probes))
    start = time.monotonic()
    for index in range(requests * len(probes)):
        name = list(probes)[index % len(probes)]
        begin = time.perf_counter()
        probes[name]()
        times[name].append((time.perf_counter() - begin) * 1000)
        now = time.monotonic()
        if now - start > 2 * seconds:
            break
        time.sleep(max(0.0, start + (index + 1) * interval - now))
    return times


class Feeder:
    """Keeps the worker busy: each thread submits an async generation, follows its events to the
    end, and submits the next, until stopped."""

    def __init__(self, url: str, form: dict[str, str | int]) -> None:
        self.url, self.form = url, form
        self.stop = threading.Event()
        self.started = threading.Event()  # a generation has started running
        self.finished = 0
        self.steps = 0
        self.errors: list[str] = []
        self.running: set[str] = set()
        self.threads = [threading.Thread(target=self.feed, daemon=True) for _ in range(FEEDERS)]

    def feed(self) -> None:
        with httpx.Client(base_url=self.url, timeout=300) as client:
            while not self.stop.is_set():
                job = client.post("/api/inference", data={**self.form, "async": "true"}).json()
                if job["error_code"] != 0:
                    self.errors.append(job["message"])
                    return
                self.running.add(job["inf_id"])
                url = f"/api/jobs/{job['inf_id']}/events"
                with client.stream("GET", url, params={"access_token": self.form["access_token"]}) as events:
                    for line in events.iter_lines():
                        if line.startswith("event:"):
                            name = line.partition(":")[2].strip()
                            if name == "started":
                                self.started.set()
                            elif name == "progress":
                                self.steps += 1
                            elif name == "finished":
                                self.finished += 1
                            elif name == "failed":
                                self.errors.append(name)
                self.running.discard(job["inf_id"])

    def __enter__(self) -> Feeder:
        for thread in self.threads:
            thread.start()
        if not self.started.wait(120):
            raise SystemExit(f"no generation started in 120 s: {self.errors}")
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        token = self.form["access_token"]
        for inf_id in list(self.running):  # no need to wait for them: the measures are taken
            httpx.post(f"{self.url}/api/jobs/{inf_id}/cancel", data={"access_token": token}, timeout=60)
        for thread in self.threads:
            thread.join(timeout=300)


def row(name: str, idle: list[float], busy: list[float]) -> tuple[str, float]:
    idle_p50, idle_p99 = percentile(idle, 0.5), percentile(idle, 0.99)
    busy_p50, busy_p99 = percentile(busy, 0.5), percentile(busy, 0.99)
    ratio = busy_p99 / idle_p99
    line = (
        f"{name:<20} {len(idle):>4} {len(busy):>4} {idle_p50:>7.1f}ms {idle_p99:>7.1f}ms"
        f" {busy_p50:>7.1f}ms {busy_p99:>7.1f}ms {busy_p50 / idle_p50:>6.2f} {ratio:>6.2f}"
    )
    return line, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="per endpoint and phase, over all rounds")
    parser.add_argument("--seconds", type=float, default=40, help="each phase's length, over all rounds")
    parser.add_argument("--rounds", type=int, default=4, help="idle and busy windows, alternating")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="daguerre-bench-") as folder:
        run(args, Path(folder))


def run(args: argparse.Namespace, data_dir: Path) -> None:
    load_before = os.getloadavg()
    process, url = start_server(data_dir, free_port())
    try:
        token = (data_dir / "demo-token").read_text().strip()
        form: dict[str, str | int] = {
            "access_token": token,
            "model_id": "demo",
            "prompt": "a lighthouse at dusk",
            "width": args.size,
            "height": args.size,
            "steps": args.steps,
            "num_images": 1,
        }
        client = httpx.Client(base_url=url, timeout=60)
        # Warm-up: the model loads, and a finished job gives GET /api/jobs/{id} something to answer.
        done = client.post("/api/inference", data=form, timeout=300).json()
        assert done["error_code"] == 0, done
        inf_id = done["inf_id"]

        def ok(response: httpx.Response) -> None:
            assert response.status_code == 200 and response.json().get("error_code", 0) == 0, response.text

        probes: dict[str, Callable[[], None]] = {
            "GET /health": lambda: ok(client.get("/health")),
            "GET /api/jobs/{id}": lambda: ok(client.get(f"/api/jobs/{inf_id}", params={"access_token": token})),
            "POST /api/models": lambda: ok(client.post("/api/models", data={"access_token": token})),
        }
        measure(probes, 20, 5)  # warm-up of the probes themselves
        idle: dict[str, list[float]] = {name: [] for name in probes}
        busy: dict[str, list[float]] = {name: [] for name in probes}
        requests, seconds = max(1, args.requests // args.rounds), args.seconds / args.rounds
        busy_s, generations, steps = 0.0, 0, 0
        for _ in range(args.rounds):
            deadline = time.monotonic() + 120
            while client.get("/health").json()["queued"]:  # the last window's cancelled jobs
                assert time.monotonic() < deadline, "the worker did not become idle"
                time.sleep(0.1)
            for name, values in measure(probes, requests, seconds).items():
                idle[name] += values
            with Feeder(url, form) as feeder:
                started = time.monotonic()
                for name, values in measure(probes, requests, seconds).items():
                    busy[name] += values
                busy_s += time.monotonic() - started
                generations, steps = generations + feeder.finished, steps + feeder.steps
            assert not feeder.errors, feeder.errors
        health = client.get("/health").json()
    finally:
        process.terminate()
        process.wait(timeout=60)

    load_after = os.getloadavg()
    print(
        f"device: {health['device']} ({health['dtype']}), CPU cores: {os.cpu_count()}, load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    print(
        f"busy: {busy_s:.1f} s in {args.rounds} windows, {generations} generations finished "
        f"({args.size}x{args.size}, {args.steps} steps), {steps} progress events streamed"
    )
    print(
        f"{'endpoint':<20} {'n':>4} {'n':>4} {'idle p50':>9} {'idle p99':>9} {'busy p50':>9} {'busy p99':>9}"
        f" {'p50 x':>6} {'p99 x':>6}"
    )
    worst = 0.0
    for name in probes:
        line, ratio = row(name, idle[name], busy[name])
        print(line)
        worst = max(worst, ratio)
    verdict = "meets" if worst <= TARGET else "misses"
    print(f"worst p99 ratio busy/idle: {worst:.2f}, {verdict} the target (<= {TARGET:g})")


if __name__ == "__main__":
    main()
