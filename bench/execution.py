"""What each execution setting (engine/runtime/execution.py) gives on this machine: the engine's
median request time with each setting on, against the defaults, interleaved in one run, and the
largest pixel difference to the defaults' images.

On a CPU this runs the topology-exact tiny model (SD 1.5's layers at small widths); on a GPU the
figures that matter come from bench/gpu.py with DAGUERRE_EXECUTION__* set.
torch.compile is left out unless --compile: on a 2-core CPU it takes minutes per shape.

    PYTHONPATH=src python bench/execution.py [--size 256] [--steps 10] [--rounds 5] [--compile]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from daguerre.demo.tiny_models import build_tiny_sd15
from daguerre.engine.jobs import ImagesResult, ModelSpec, TextToImageJob
from daguerre.engine.options import ExecutionOptions
from daguerre.engine.runtime.local import LocalEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="include torch.compile (minutes on a CPU)")
    args = parser.parse_args()
    arms = {
        "defaults": ExecutionOptions(),
        "channels_last": ExecutionOptions(channels_last=True),
        "attention=classic": ExecutionOptions(attention="classic"),
        "fuse_qkv": ExecutionOptions(fuse_qkv=True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.compile:
            arms["compile"] = ExecutionOptions(compile=True, compile_cache_dir=Path(tmp) / "inductor")
        folder = build_tiny_sd15(Path(tmp) / "tiny")
        model = ModelSpec("tiny", "1", str(folder), "diffusers", "sd15")
        job = TextToImageJob(
            model, "a lighthouse", "", args.size, args.size, args.steps, 7.5, "DPMSolverMultistep", (1,)
        )
        engines = {
            name: LocalEngine(cache_dir=Path(tmp), device="auto", execution=options) for name, options in arms.items()
        }
        images: dict[str, np.ndarray] = {}
        for name, engine in engines.items():  # warm-up: load, and compile where asked
            result = engine.run(job)
            assert isinstance(result, ImagesResult)
            images[name] = np.asarray(Image.open(io.BytesIO(result.images[0])).convert("RGB"), dtype=np.int16)
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.rounds):  # interleaved, so load from other work falls on every arm alike
            for name, engine in engines.items():
                start = time.perf_counter()
                engine.run(job)
                times[name].append(time.perf_counter() - start)
    device = next(iter(engines.values())).device
    print(f"device {device}; tiny SD 1.5 topology, {args.size}x{args.size}, {args.steps} steps, {args.rounds} rounds")
    base = statistics.median(times["defaults"])
    for name in engines:
        median = statistics.median(times[name])
        levels = int(np.abs(images[name] - images["defaults"]).max())
        print(f"{name:20s} median {median * 1000:7.1f} ms  ratio {median / base:.2f}  max pixel difference {levels}")


if __name__ == "__main__":
    main()
