"""Does switching LoRAs cost anything? Median request time through the HTTP API, alternating
between two LoRAs, against requests with no LoRA, on the same base model (the demo model,
128x128, 10 steps). Target: ratio at most 1.2.

A third arm, the same LoRA on every request, separates what switching costs from what applying a
LoRA costs at all (its extra matmuls, a large share of the work at the demo model's tiny widths
and a small one at SD 1.5's).

    PYTHONPATH=src python bench/lora_switch.py [--rounds 10]
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
