"""Peak memory of a tiled ESRGAN upscale of a large image against a small one.

Each case runs in a fresh process. After loading the model and warming it up on one tile, the
process notes its resident set, resets the kernel's peak counter (/proc/self/clear_refs), runs the
upscale, and reads the peak back (VmHWM): the difference is the upscale's working memory, the
8-bit result included. glibc's mmap threshold is pinned so freed buffers go back to the kernel
at once instead of hiding in the heap. Linux only.

    python bench/upscale_memory.py [--scale 4] [--small 256] [--large 768] [--tile 256] [--overlap 32]

The model is the tiny random RRDBNet of the tests and demo (16 features, growth 32, 1 block);
real Real-ESRGAN (64 features, 23 blocks) has larger activations per tile, so its ratio is closer
still to 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(model_path: str, side: int, tile: int, overlap: int) -> dict[str, float]:
    import numpy as np
    import torch

    from daguerre.engine.jobs import ModelSpec, Tiling
    from daguerre.engine.pipelines.upscaling import load_upscaler, upscale_tiled

    spec = ModelSpec("bench", "1", model_path, "single_file", "esrgan")
    model = load_upscaler(spec, torch.device("cpu"), torch.float32)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    tiling = Tiling(tile, overlap)
    upscale_tiled(model, image[: min(tile, side), : min(tile, side)], tiling)  # one-time kernel set-up
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current one
    start = time.perf_counter()
    result = upscale_tiled(model, image, tiling)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {"working": (peak - before) * 1024, "result": result.nbytes, "seconds": seconds}


def run_case(model_path: Path, side: int, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    command = [
        sys.executable,
        __file__,
        "--case",
        str(side),
        "--model",
        str(model_path),
        "--tile",
        str(args.tile),
        "--overlap",
        str(args.overlap),
    ]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    measured: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, choices=(2, 4), default=4)
    parser.add_argument("--small", type=int, default=256, help="side of the small image (default: one tile)")
    parser.add_argument("--large", type=int, default=768, help="side of the large image")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.model, args.case, args.tile, args.overlap)))
        return

    from daguerre.demo.tiny_models import build_tiny_rrdbnet
    from daguerre.engine.pipelines.upscaling import tile_starts

    with tempfile.TemporaryDirectory() as folder:
        model_path = build_tiny_rrdbnet(Path(folder) / f"tiny-x{args.scale}.pth", args.scale)
        cases = {side: run_case(model_path, side, args) for side in (args.small, args.large)}
    print(f"tiled ESRGAN x{args.scale}, tiny random RRDBNet, CPU float32, tile {args.tile}, overlap {args.overlap}")
    print(f"{'input':>11} {'output':>11} {'tiles':>6} {'time':>8} {'working memory':>15} {'of which result':>16}")
    for side, case in cases.items():
        tiles = len(tile_starts(side, args.tile, args.overlap)) ** 2
        out = side * args.scale
        print(
            f"{f'{side}x{side}':>11} {f'{out}x{out}':>11} {tiles:>6} {case['seconds']:>7.1f}s "
            f"{case['working'] / MIB:>11.1f} MiB {case['result'] / MIB:>12.1f} MiB"
        )
    small, large = cases[args.small], cases[args.large]
    print(
        f"peak working memory, large / small: {large['working'] / small['working']:.2f} "
        f"for {(args.large / args.small) ** 2:.0f}x the pixels"
    )
    print(
        "without the 8-bit result every upscale must hold: "
        f"{(large['working'] - large['result']) / (small['working'] - small['result']):.2f}"
    )


if __name__ == "__main__":
    main()
