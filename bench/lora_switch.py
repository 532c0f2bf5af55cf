"""Does switching LoRAs cost anything? Median request time through the HTTP API, alternating
between two LoRAs, against requests with no LoRA, on the same base model (the demo model,
128x128, 10 steps). Target: ratio at most 1.2.

A third arm, the same LoRA on every request, separates what switching costs from what applying a
LoRA costs at all (its extra matmuls, a large share of the work at the demo model's tiny widths
and a small one at SD 1.5's).

    PYTHONPATH=src python bench/lora_switch.py [--rounds 10]

With --full it measures the switch itself at full size: a full-size SD 1.5 pipeline (random
weights, bench/gpu.py's builder) and two rank-32 LoRAs on every UNet and text-encoder attention
projection, both loaded once; then the median time the engine takes to make the other one active
(restore the base weights, fuse the other LoRA in; CUDA synchronised), and to remove LoRAs.
Target on a GPU: at most 100 ms.

    PYTHONPATH=src python bench/lora_switch.py --full [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from daguerre.app import create_app
from daguerre.demo.install import DEMO_MODEL_ID, install_demo_model
from daguerre.demo.tiny_models import build_tiny_lora
from daguerre.services.catalog import Format, Kind, NewModel
from daguerre.services.container import Services
from daguerre.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="requests per arm (after one warm-up each)")
    parser.add_argument("--full", action="store_true", help="time the switch itself on a full-size SD 1.5")
    args = parser.parse_args()
    if args.full:
        full_size(args.rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), device="cpu")
        app = create_app(settings)
        with TestClient(app) as client:
            services: Services = app.state.services
            base = Path(install_demo_model(settings, services.catalog).latest.path)
            for seed, lora_id in enumerate(("lora-one", "lora-two"), start=1):
                path = build_tiny_lora(base, Path(tmp) / f"{lora_id}.safetensors", "kohya", seed=seed)
                services.catalog.add(NewModel(path, Format.SINGLE_FILE, lora_id, kind=Kind.LORA, id=lora_id))
            token, _ = services.accounts.create_token(name="bench", credits=10_000)
            fields = {
                "access_token": token,
                "model_id": DEMO_MODEL_ID,
                "prompt": "a lighthouse at dusk",
                "width": 128,
                "height": 128,
                "steps": 10,
                "num_images": 1,
                "seed": 1,
            }

            def timed(**extra: str) -> float:
                start = time.perf_counter()
                body = client.post("/api/inference", data={**fields, **extra}).json()
                elapsed = time.perf_counter() - start
                assert body["error_code"] == 0, body
                return elapsed

            # Warm-up: load the base model and both LoRAs once, as a running server would have.
            for extra in ({}, {"lora": "lora-one"}, {"lora": "lora-two"}):
                timed(**extra)
            plain: list[float] = []
            switching: list[float] = []
            same: list[float] = []
            # Interleaved, so that load from other processes falls on all arms alike.
            for i in range(args.rounds):
                plain.append(timed())
                switching.append(timed(lora="lora-one" if i % 2 == 0 else "lora-two"))
                switching.append(timed(lora="lora-two" if i % 2 == 0 else "lora-one"))
                same.append(timed(lora="lora-one"))
    no_lora, with_lora, one_lora = (statistics.median(arm) for arm in (plain, switching, same))
    print(f"no LoRA:                    median {no_lora * 1000:.0f} ms over {len(plain)} requests")
    print(f"alternating two LoRAs:      median {with_lora * 1000:.0f} ms over {len(switching)} requests")
    print(f"the same LoRA every time:   median {one_lora * 1000:.0f} ms over {len(same)} requests")
    print(f"ratio alternating / none:   {with_lora / no_lora:.2f}  (target at most 1.2)")
    print(f"ratio alternating / same:   {with_lora / one_lora:.2f}  (the cost of switching itself)")


def full_size(rounds: int) -> None:
    import torch

    from daguerre.demo.full_size import build_full_sd15
    from daguerre.engine.jobs import LoraSpec, ModelSpec
    from daguerre.engine.runtime.local import LocalEngine

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        folder = build_full_sd15(Path(tmp) / "sd15", seed=0, cache_dir=Path(tmp) / "cache")
        engine = LocalEngine(cache_dir=Path(tmp) / "cache")
        loaded = engine.pipeline(ModelSpec("sd15", "1", str(folder), "diffusers", "sd15"))
        specs = [
            LoraSpec(
                name,
                "1",
                str(build_tiny_lora(loaded.pipe, Path(tmp) / f"{name}.safetensors", "kohya", seed, rank=32)),
                0.8,
            )
            for seed, name in enumerate(("lora-one", "lora-two"), start=1)
        ]
        print(f"built and loaded in {time.perf_counter() - started:.1f} s on {engine.device} ({engine.dtype})")

        def timed(loras: tuple[LoraSpec, ...]) -> float:
            start = time.perf_counter()
            engine.loras(loaded, loras)
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        first_load = timed((specs[0],))
        timed((specs[1],))
        timed(())
        switches = [timed((specs[i % 2],)) for i in range(rounds)]
        to_none = [timed(()) if i % 2 else timed((specs[0],)) for i in range(2 * rounds)][1::2]
    adapter_mb = loaded.loras.loaded_bytes / 2**20 / len(loaded.loras.loaded)
    print(f"first use of a LoRA (file load included): {first_load * 1000:.0f} ms; {adapter_mb:.1f} MiB per adapter")
    print(f"switch between two loaded LoRAs: median {statistics.median(switches) * 1000:.0f} ms over {rounds}")
    print(f"back to no LoRA:                 median {statistics.median(to_none) * 1000:.0f} ms over {rounds}")
    print("target on a GPU: at most 100 ms per switch")


if __name__ == "__main__":
    main()
