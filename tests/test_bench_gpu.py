"""bench/gpu.py, the full-size throughput benchmark, keeps working: its --small run (tiny model on
the CPU, every arm: plain diffusers, the engine, a live server over HTTP) prints a table with every
measure and every ratio to plain diffusers, and checks every image it made."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MEASURES = ("s/request", "denoising it/s", "images/s")
NUMBER = re.compile(r"^\d+\.\d+$")


@pytest.mark.slow
def test_small_run_prints_every_measure_and_ratio(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    command = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--small", "--workdir", str(tmp_path)]
    # Bounded: 166 s measured on 2 cores at load average 7 (README, "Throughput").
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=420, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 6 and cells[0] not in ("measure", "---"):
            rows[cells[0]] = cells[1:]
    expected = [
        f"{size} x{count} {measure}" for size in ("128x128", "128x192") for count in (1, 4) for measure in MEASURES
    ]
    expected += [
        "8 clients 128x128 x1 images/s",
        "cold start s (process start to first image)",
        "warm model swap s",
    ]
    for name in expected:
        values = rows[name]
        # Three arms, then the ratios (b)/(a) and (c)/(a), all numbers.
        assert all(NUMBER.match(value) for value in values), (name, values)
        assert float(values[0]) > 0 or name == "warm model swap s", (name, values)
    assert rows["peak GPU memory GiB"] == ["n/a"] * 5  # a CPU has no GPU memory to report
    assert re.search(r"image checks: all (\d+) images the right size, finite and not black", done.stdout)
    checked = int(re.search(r"all (\d+) images", done.stdout).group(1))  # type: ignore[union-attr]
    # Per arm: warm-up + one round of 1 and 4 images at two sizes, the cold first image, 8 clients,
    # and the swap's one-step requests.
    assert checked >= 3 * (2 * 2 * (1 + 4) + 1 + 8)
