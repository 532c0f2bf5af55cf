"""The Ray Serve engine on a real local Ray cluster (2 CPUs), the demo models on CPU replicas:

(a) throughput: N concurrent clients against 1 replica and against 2 replicas (one CPU each), two
    models alternating (each replica holds both), and the ratio (the ceiling on 2 cores is 2);
(b) routing: 4 models over 2 replicas holding 2 each, a Zipf-like mix (weights 1, 1/2, 1/3, 1/4),
    N concurrent clients: model loads per 100 requests with daguerre's affinity router, Ray Serve's
    own multiplexed routing, and round-robin. Target: affinity at least 5x fewer than round-robin.

It also measures, in-process, what one request and one model load cost on this CPU (the inputs of
bench/fleet_simulation.py). Ray binds every interface, so everything runs in a fresh network
namespace (tests/support/ray_cluster.py); this script re-runs itself there.

    PYTHONPATH=src:. python bench/fleet.py [--clients 8] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

INSIDE = "DAGUERRE_FLEET_BENCH_INSIDE"
ZIPF = (1.0, 1 / 2, 1 / 3, 1 / 4)
STEPS, SIZE = 10, 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=200, help="requests per routing arm")
    parser.add_argument("--throughput-requests", type=int, default=64, help="requests per throughput arm")
    args = parser.parse_args()
    if os.environ.get(INSIDE):
        asyncio.run(inside(args))
        return
    from tests.support.ray_cluster import run_in_namespace, unavailable

    reason = unavailable()
    if reason:
        raise SystemExit(reason)
    run = run_in_namespace([sys.executable, *sys.argv], timeout_s=1800, env={INSIDE: "1"})
    print(run.stdout, end="")
    if run.returncode != 0:
        raise SystemExit(f"the benchmark failed (exit {run.returncode}):\n{run.stderr[-4000:]}")


async def inside(args: argparse.Namespace) -> None:
    from daguerre.demo.tiny_models import build_demo_sd15
    from tests.support.ray_cluster import ray_cluster

    with tempfile.TemporaryDirectory(prefix="daguerre-fleet-") as tmp, ray_cluster(num_cpus=2) as cluster:
        models = {f"m{index}": build_demo_sd15(Path(tmp) / f"m{index}", seed=index) for index in range(4)}
        load_s, request_s = costs(models["m0"], Path(tmp) / "cache")
        started = time.monotonic()
        print(f"load average at start: {os.getloadavg()[0]:.1f}")
        print(
            f"one request ({SIZE}x{SIZE}, {STEPS} steps, demo model, 1 thread): {request_s * 1000:.0f} ms; "
            f"one model load: {load_s * 1000:.0f} ms ({load_s / request_s:.1f} requests' worth)\n"
        )

        rows = []
        for replicas in (1, 2):
            names = (["m0", "m1"] * args.throughput_requests)[: args.throughput_requests]
            result = await arm(cluster.address, "affinity", replicas, 1.0, models, names, args.clients, tmp)
            rows.append((replicas, result))
        print(f"(a) throughput, {args.clients} concurrent clients, {args.throughput_requests} requests, 2 models")
        print(f"{'replicas':>8}  {'requests/s':>10}  {'model loads':>11}")
        for replicas, result in rows:
            print(f"{replicas:>8}  {result['rate']:>10.2f}  {result['loads']:>11}")
        print(f"ratio 2 replicas / 1 replica: {rows[1][1]['rate'] / rows[0][1]['rate']:.2f} (ceiling 2)\n")

        draw = random.Random(42)
        mix = draw.choices([f"m{index}" for index in range(4)], weights=ZIPF, k=args.requests)
        routed = {}
        for router in ("affinity", "serve", "round_robin"):
            routed[router] = await arm(cluster.address, router, 2, 0.5, models, mix, args.clients, tmp)
        print(
            f"(b) routing, 4 models (Zipf 1, 1/2, 1/3, 1/4) on 2 replicas holding 2 each, "
            f"{args.requests} requests, {args.clients} concurrent clients"
        )
        print(f"{'router':>12}  {'loads':>5}  {'per 100 requests':>16}  {'requests/s':>10}")
        for router, result in routed.items():
            per_100 = 100 * result["loads"] / args.requests
            print(f"{router:>12}  {result['loads']:>5}  {per_100:>16.1f}  {result['rate']:>10.2f}")
        affinity = max(routed["affinity"]["loads"], 1)
        print(
            f"round_robin / affinity: {routed['round_robin']['loads'] / affinity:.1f}x more loads (target >= 5); "
            f"serve / affinity: {routed['serve']['loads'] / affinity:.1f}x"
        )
        print("(the first load of each model on a fresh replica is counted: at least 4 with any router)")
        print(f"\nload average at end: {os.getloadavg()[0]:.1f}; {time.monotonic() - started:.0f} s")


def costs(model: Path, cache_dir: Path) -> tuple[float, float]:
    """Seconds of one model load and of one warm request, in this process (medians of 3)."""
    from daguerre.engine.runtime.local import LocalEngine

    loads, requests = [], []
    for round_ in range(3):
        engine = LocalEngine(cache_dir=cache_dir, device="cpu")
        start = time.perf_counter()
        engine.pipeline(spec(model, f"cost{round_}"))
        loads.append(time.perf_counter() - start)
        engine.run(job(model, f"cost{round_}", 0))
        start = time.perf_counter()
        engine.run(job(model, f"cost{round_}", 1))
        requests.append(time.perf_counter() - start)
    return statistics.median(loads), statistics.median(requests)


def spec(path: Path, name: str) -> Any:
    from daguerre.engine.jobs import ModelSpec

    return ModelSpec(id=name, version="1", path=str(path), format="diffusers", family="sd15")


def job(path: Path, name: str, seed: int) -> Any:
    from daguerre.engine.jobs import TextToImageJob

    return TextToImageJob(spec(path, name), "a lighthouse", "", SIZE, SIZE, STEPS, 7.5, "DDIM", (seed,))


async def arm(
    address: str,
    router: str,
    replicas: int,
    cpus: float,
    models: dict[str, Path],
    names: list[str],
    clients: int,
    tmp: str,
) -> dict[str, Any]:
    """Deploys a fresh application of `replicas` (`cpus` each, 2 models each), runs `names` (one
    job each) with `clients` at a time, and deletes it; its model loads (every replica's own count)
    and requests per second."""
    from ray import serve

    from daguerre.engine.jobs import Finished
    from daguerre.engine.ray.client import RayEngineClient
    from daguerre.settings import RaySettings

    app_name = f"bench-{router}-{replicas}"
    settings = RaySettings.model_validate(
        {
            "address": address,
            "app_name": app_name,
            "num_gpus": 0,
            "num_cpus": cpus,
            "min_replicas": replicas,
            "max_replicas": replicas,
            "max_models_per_replica": 2,
            "router": router,
        }
    )
    engine = RayEngineClient(settings, {"cache_dir": Path(tmp) / "cache", "device": "cpu"}, max_queue=len(names))
    await engine.start()
    pending = list(enumerate(names))

    async def client() -> None:
        while pending:
            index, name = pending.pop(0)
            handle = await engine.submit(f"{app_name}-{index}", job(models[name], name, index), f"client-{index}")
            final = None
            async for event in handle.events():
                final = event
            assert isinstance(final, Finished), final

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    loads = sum(report.model_loads for report in engine.replicas())
    await engine.close()
    await asyncio.to_thread(serve.delete, app_name)
    return {"rate": len(names) / elapsed, "loads": loads}


if __name__ == "__main__":
    main()
