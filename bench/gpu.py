"""Throughput at full size: daguerre against what an operator would otherwise write.

Builds a full-size SD 1.5 checkpoint (the real UNet, VAE and CLIP text encoder configs that the
package ships for offline loading, seeded random weights; nothing is downloaded), registers it,
and measures side by side in one run:

  (a) plain diffusers: StableDiffusionPipeline, fp16 on CUDA (fp32 on CPU), SDPA, DPM++ 2M
      (DPMSolverMultistepScheduler), called directly, one request at a time;
  (b) daguerre's engine, called directly (EngineClient.submit, its queue and worker);
  (c) daguerre over HTTP: a live `daguerre serve` process, POST /api/inference.

Each arm runs in a fresh process of its own, one after the other, so its cold start (process
start to first image) and its peak GPU memory are its own. Per size (512x512, 512x768) and
num_images (1, 4), at 30 steps and guidance 7.5: seconds per request, denoising iterations per
second, images per second; then 8 concurrent clients each asking for one 512x512 image (plain
diffusers serves them one at a time); the warm model swap (a request for a second model right
after the first: plain diffusers loads it from disk, daguerre copies it back from the host-memory
tier); and every ratio to (a). Every image is checked: its size, no NaN, not black.

daguerre's arms use the `execution.*` and `model_cache.*` settings from the environment
(DAGUERRE_EXECUTION__COMPILE=true, ...), as a server would; the header prints them.

    python bench/gpu.py                 # on a GPU: the full-size run
    python bench/gpu.py --small         # on a CPU: tiny model, 128x128 and 128x192, 4 steps (the suite runs it)

With --small every process runs one torch thread: on a shared 2-core machine, torch's thread per
core made small requests ten times slower (README, "Tests and benchmarks").
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
GUIDANCE = 7.5
SCHEDULER = "DPMSolverMultistep"
ARMS = ("diffusers", "engine", "http")
ARM_TITLES = {"diffusers": "(a) diffusers", "engine": "(b) engine", "http": "(c) HTTP"}


@dataclass
class Plan:
    """What every arm runs; passed to the arm processes as JSON."""

    small: bool
    device: str
    sizes: list[tuple[int, int]]
    counts: list[int]
    steps: int
    rounds: int
    clients: int
    models: dict[str, str]  # model id -> diffusers folder
    versions: dict[str, str]  # model id -> registered version
    data_dir: str
    tokens: list[str] = field(default_factory=list)
    swap_rounds: int = 2
    model_bytes: int = 0  # one pipeline as (a) measured it: daguerre's device tier is sized to hold one

    def cache_settings(self) -> dict[str, int]:
        """daguerre's model cache for the swap: the device tier holds one bench model, the host
        tier both."""
        return {"max_bytes": self.model_bytes * 3 // 2, "host_max_bytes": self.model_bytes * 3}

    @property
    def configs(self) -> list[tuple[int, int, int]]:
        return [(w, h, n) for w, h in self.sizes for n in self.counts]


@dataclass
class ArmResult:
    cold_s: float = 0.0  # filled in by the parent for (a) and (b): it sees the process start
    request_s: dict[str, float] = field(default_factory=dict)  # "WxH xN" -> median seconds
    its: dict[str, float] = field(default_factory=dict)  # denoising iterations per second
    throughput: float = 0.0  # images per second, `clients` concurrent clients
    swap_s: float = 0.0
    peak_bytes: int | None = None
    model_bytes: int = 0
    images: int = 0
    failures: list[str] = field(default_factory=list)


def key(width: int, height: int, count: int) -> str:
    return f"{width}x{height} x{count}"


# Image checks ---------------------------------------------------------------------------------


def check_image(array: Any, width: int, height: int, where: str, result: ArmResult) -> None:
    """An (H, W, 3) float or uint8 array: the right size, finite, not black."""
    import numpy as np

    result.images += 1
    values = np.asarray(array, dtype=np.float32)
    if values.shape != (height, width, 3):
        result.failures.append(f"{where}: shape {values.shape}, expected {(height, width, 3)}")
    elif not np.isfinite(values).all():
        result.failures.append(f"{where}: NaN or infinite values")
    elif float(values.max()) <= (1 / 255 if values.max() <= 1.0 else 1.0):
        result.failures.append(f"{where}: black")


def check_png(data: bytes, width: int, height: int, where: str, result: ArmResult) -> None:
    import io

    import numpy as np
    from PIL import Image

    check_image(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), width, height, where, result)


# Building the checkpoints ---------------------------------------------------------------------


def prepare(args: argparse.Namespace, work: Path) -> Plan:
    import torch

    from daguerre.demo.full_size import build_full_sd15
    from daguerre.demo.tiny_models import build_tiny_sd15
    from daguerre.services.catalog import Format, NewModel
    from daguerre.services.container import open_database
    from daguerre.settings import Settings

    device = "cuda" if torch.cuda.is_available() and not args.small else "cpu"
    data_dir = work / "data"
    settings = Settings(data_dir=data_dir, device=device)
    database = open_database(settings)
    models, versions = {}, {}
    for index, model_id in enumerate(("bench-a", "bench-b")):
        folder = work / "models" / model_id
        if args.small:
            build_tiny_sd15(folder, seed=index)
        else:
            build_full_sd15(folder, seed=index, cache_dir=settings.cache_dir)
        record = database.catalog.add(NewModel(folder, Format.DIFFUSERS, model_id, id=model_id))
        models[model_id], versions[model_id] = str(folder), record.latest.version
    tokens = [database.accounts.create_token(name=f"client-{i}", credits=1e9)[0] for i in range(args.clients)]
    database.engine.dispose()
    small = args.small
    return Plan(
        small=small,
        device=device,
        # The API's smallest size is 128; 128x192 keeps 512x768's aspect.
        sizes=[(128, 128), (128, 192)] if small else [(512, 512), (512, 768)],
        counts=[1, 4],
        steps=args.steps or (4 if small else 30),
        rounds=args.rounds or (1 if small else 3),
        clients=args.clients,
        models=models,
        versions=versions,
        data_dir=str(data_dir),
        tokens=tokens,
        swap_rounds=1 if small else 3,
    )


# Timing helpers ------------------------------------------------------------------------------


class StepClock:
    """Timestamps of denoising steps; iterations per second over the steps after the first (the
    first includes prompt encoding and setup)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def tick(self) -> None:
        self.stamps.append(time.perf_counter())

    def rate(self) -> float:
        if len(self.stamps) < 2:
            return 0.0
        return (len(self.stamps) - 1) / (self.stamps[-1] - self.stamps[0])


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def peak_bytes(device: str) -> int | None:
    if device != "cuda":
        return None
    import torch

    return int(torch.cuda.max_memory_allocated())


# (a) plain diffusers ------------------------------------------------------------------------


def arm_diffusers(plan: Plan, result: ArmResult) -> None:
    import torch

    from daguerre.engine.diffusers_classes import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from daguerre.engine.runtime.memory import resident_bytes

    dtype = torch.float16 if plan.device == "cuda" else torch.float32

    def load(model_id: str) -> StableDiffusionPipeline:
        pipe = StableDiffusionPipeline.from_pretrained(
            plan.models[model_id], dtype=dtype, safety_checker=None, local_files_only=True
        ).to(plan.device)
        # DPM++ 2M, as A1111 names it; diffusers' attention processor is SDPA by default.
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    state = {"pipe": load("bench-a")}

    def generate(width: int, height: int, count: int, steps: int, clock: StepClock | None = None) -> Any:
        def on_step(_pipe: Any, _step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if clock is not None:
                clock.tick()
            return tensors

        images = state["pipe"](
            PROMPT,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            num_images_per_prompt=count,
            generator=[torch.Generator("cpu").manual_seed(7 + i) for i in range(count)],
            output_type="np",
            callback_on_step_end=on_step,
        ).images
        sync(plan.device)
        for index, image in enumerate(images):
            check_image(image, width, height, f"diffusers {key(width, height, count)} #{index}", result)
        return images

    w0, h0 = plan.sizes[0]
    generate(w0, h0, 1, plan.steps)
    first_image()
    result.model_bytes = resident_bytes(state["pipe"])
    for width, height, count in plan.configs:
        generate(width, height, count, plan.steps)  # warm-up: allocator, kernels for this shape
        times, rates = [], []
        for _ in range(plan.rounds):
            clock = StepClock()
            start = time.perf_counter()
            generate(width, height, count, plan.steps, clock)
            times.append(time.perf_counter() - start)
            rates.append(clock.rate())
        result.request_s[key(width, height, count)] = statistics.median(times)
        result.its[key(width, height, count)] = statistics.median(rates)
    # Clients served one request at a time: what a plain pipeline behind a web framework does.
    start = time.perf_counter()
    for _ in range(plan.clients):
        generate(w0, h0, 1, plan.steps)
    result.throughput = plan.clients / (time.perf_counter() - start)

    def swap(model_id: str) -> None:
        del state["pipe"]
        gc.collect()
        if plan.device == "cuda":
            torch.cuda.empty_cache()
        state["pipe"] = load(model_id)

    result.swap_s = measure_swap(plan, swap, lambda: generate(w0, h0, 1, 1))
    result.peak_bytes = peak_bytes(plan.device)


def measure_swap(plan: Plan, switch: Callable[[str], None], request: Callable[[], Any]) -> float:
    """Median extra seconds of a one-step request right after switching models, over the same
    request on a warm model. Both models are used once first, so the switch meets a model that
    has been loaded before (daguerre: in its host tier), as in a server that has run a while."""
    warm, switched = [], []
    current = "bench-a"
    for model_id in ("bench-b", "bench-a"):
        switch(model_id)
        request()
    for _ in range(plan.swap_rounds):
        start = time.perf_counter()
        request()
        warm.append(time.perf_counter() - start)
        current = "bench-b" if current == "bench-a" else "bench-a"
        start = time.perf_counter()
        switch(current)
        request()
        switched.append(time.perf_counter() - start)
    return max(0.0, statistics.median(switched) - statistics.median(warm))


# (b) daguerre's engine ------------------------------------------------------------------------


def arm_engine(plan: Plan, result: ArmResult) -> None:
    asyncio.run(_arm_engine(plan, result))


async def _arm_engine(plan: Plan, result: ArmResult) -> None:
    import uuid

    from daguerre.app import default_engine
    from daguerre.engine.jobs import Failed, Finished, ImagesResult, ModelSpec, Progress, TextToImageJob
    from daguerre.engine.runtime.local import LocalEngine
    from daguerre.settings import ModelCacheSettings, Settings

    cache = ModelCacheSettings(**plan.cache_settings())
    engine = default_engine(Settings(data_dir=Path(plan.data_dir), device=plan.device, model_cache=cache))
    assert isinstance(engine, LocalEngine)
    await engine.start()
    specs = {
        model_id: ModelSpec(model_id, plan.versions[model_id], path, "diffusers", "sd15")
        for model_id, path in plan.models.items()
    }
    current = {"model": "bench-a"}

    async def generate(
        width: int, height: int, count: int, steps: int, clock: StepClock | None = None, owner: str = "bench"
    ) -> None:
        seeds = tuple(7 + i for i in range(count))
        job = TextToImageJob(specs[current["model"]], PROMPT, "", width, height, steps, GUIDANCE, SCHEDULER, seeds)
        handle = await engine.submit(uuid.uuid4().hex, job, owner)
        async for event in handle.events():
            if isinstance(event, Progress) and clock is not None:
                clock.tick()
            elif isinstance(event, Failed):
                result.failures.append(f"engine {key(width, height, count)}: {event.message}")
            elif isinstance(event, Finished):
                assert isinstance(event.result, ImagesResult)
                for index, image in enumerate(event.result.images):
                    check_png(image, width, height, f"engine {key(width, height, count)} #{index}", result)

    w0, h0 = plan.sizes[0]
    await generate(w0, h0, 1, plan.steps)
    first_image()
    result.model_bytes = engine.cache.size_of(specs["bench-a"])
    for width, height, count in plan.configs:
        await generate(width, height, count, plan.steps)
        times, rates = [], []
        for _ in range(plan.rounds):
            clock = StepClock()
            start = time.perf_counter()
            await generate(width, height, count, plan.steps, clock)
            times.append(time.perf_counter() - start)
            rates.append(clock.rate())
        result.request_s[key(width, height, count)] = statistics.median(times)
        result.its[key(width, height, count)] = statistics.median(rates)
    start = time.perf_counter()
    await asyncio.gather(*(generate(w0, h0, 1, plan.steps, owner=f"client-{i}") for i in range(plan.clients)))
    result.throughput = plan.clients / (time.perf_counter() - start)

    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1)

    def request() -> None:
        asyncio.run_coroutine_threadsafe(generate(w0, h0, 1, 1), loop).result()

    def switch(model_id: str) -> None:
        current["model"] = model_id

    result.swap_s = await loop.run_in_executor(pool, measure_swap, plan, switch, request)
    result.peak_bytes = peak_bytes(plan.device)
    await engine.close()


# (c) daguerre over HTTP -----------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def live_server(plan: Plan, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "DAGUERRE_DEVICE": plan.device,
        **{f"DAGUERRE_MODEL_CACHE__{name.upper()}": str(value) for name, value in plan.cache_settings().items()},
        "DAGUERRE_MAX_QUEUED_PER_TOKEN": "100",
    }
    command = [sys.executable, "-c", "from daguerre.cli import app; app()", "serve"]
    command += ["--data-dir", plan.data_dir, "--port", str(port)]
    with log.open("wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield server
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def step_seconds(client: Any) -> tuple[float, float]:
    """(sum, count) of the server's denoising-step histogram for images."""
    total = count = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('daguerre_denoising_step_seconds_sum{kind="image"}'):
            total = float(line.split()[-1])
        elif line.startswith('daguerre_denoising_step_seconds_count{kind="image"}'):
            count = float(line.split()[-1])
    return total, count


def arm_http(plan: Plan, result: ArmResult, log: Path) -> None:
    import httpx

    port = free_port()
    started = time.perf_counter()
    with (
        live_server(plan, port, log) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3600) as client,
    ):
        deadline = started + 600
        while True:
            if server.poll() is not None:
                raise SystemExit(f"daguerre serve exited with {server.returncode}; its log: {log}")
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() > deadline:
                raise SystemExit(f"daguerre serve did not answer within 10 minutes; its log: {log}")
            time.sleep(0.05)
        current = {"model": "bench-a"}

        def generate(width: int, height: int, count: int, steps: int, token: str = plan.tokens[0]) -> None:
            form = {
                "access_token": token,
                "model_id": current["model"],
                "prompt": PROMPT,
                "use_default_neg": "false",
                "width": width,
                "height": height,
                "steps": steps,
                "scale": GUIDANCE,
                "num_images": count,
                "seed": 7,
                "scheduler": SCHEDULER,
            }
            body = client.post("/api/inference", data=form).json()
            if body["error_code"] != 0:
                result.failures.append(f"http {key(width, height, count)}: {body['message']}")
                return
            for index, url in enumerate(body["images"]):
                check_png(client.get(url).content, width, height, f"http {key(width, height, count)} #{index}", result)

        w0, h0 = plan.sizes[0]
        generate(w0, h0, 1, plan.steps)
        result.cold_s = time.perf_counter() - started
        for width, height, count in plan.configs:
            generate(width, height, count, plan.steps)
            times = []
            before = step_seconds(client)
            for _ in range(plan.rounds):
                start = time.perf_counter()
                generate(width, height, count, plan.steps)
                times.append(time.perf_counter() - start)
            after = step_seconds(client)
            result.request_s[key(width, height, count)] = statistics.median(times)
            steps_run = after[1] - before[1]
            result.its[key(width, height, count)] = steps_run / (after[0] - before[0]) if steps_run else 0.0
        start = time.perf_counter()
        with ThreadPoolExecutor(plan.clients) as pool:
            list(pool.map(lambda token: generate(w0, h0, 1, plan.steps, token), plan.tokens[: plan.clients]))
        result.throughput = plan.clients / (time.perf_counter() - start)

        def switch(model_id: str) -> None:
            current["model"] = model_id

        result.swap_s = measure_swap(plan, switch, lambda: generate(w0, h0, 1, 1))
        result.peak_bytes = client.get("/health").json()["memory"].get("device_peak_bytes")


# Orchestration ----------------------------------------------------------------------------------

FIRST_IMAGE = "BENCH-FIRST-IMAGE"
RESULT = "BENCH-RESULT "


def first_image() -> None:
    print(FIRST_IMAGE, flush=True)


def run_arm_process(arm: str, plan_file: Path, log: Path) -> ArmResult:
    """Run one arm in a fresh process; its cold start is from the spawn to its first image."""
    started = time.perf_counter()
    command = [sys.executable, __file__, "--arm", arm, "--plan", str(plan_file)]
    cold = 0.0
    payload = None
    with (
        log.open("w") as out,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=out, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        ) as child,
    ):
        assert child.stdout is not None
        for line in child.stdout:
            if line.strip() == FIRST_IMAGE and not cold:
                cold = time.perf_counter() - started
            elif line.startswith(RESULT):
                payload = json.loads(line[len(RESULT) :])
    if child.returncode != 0 or payload is None:
        raise SystemExit(f"arm {arm} failed (exit {child.returncode}); its log: {log}\n{log.read_text()[-3000:]}")
    result = ArmResult(**payload)
    result.cold_s = cold
    return result


def execution_summary(device: str) -> str:
    from daguerre.settings import Settings

    settings = Settings(device=device)
    execution = settings.execution.model_dump(exclude={"compile_cache_dir"})
    cache = settings.model_cache
    return f"execution {execution}; model_cache.host_max_bytes {cache.host_max_bytes}"


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    return "n/a" if value is None or not base else f"{value / base:.2f}"


def table(plan: Plan, results: dict[str, ArmResult]) -> list[str]:
    rows: list[tuple[str, dict[str, float | None]]] = []
    for width, height, count in plan.configs:
        name = key(width, height, count)
        rows.append((f"{name} s/request", {arm: results[arm].request_s[name] for arm in ARMS}))
        rows.append((f"{name} denoising it/s", {arm: results[arm].its[name] for arm in ARMS}))
        rows.append((f"{name} images/s", {arm: count / results[arm].request_s[name] for arm in ARMS}))
    w0, h0 = plan.sizes[0]
    rows.append((f"{plan.clients} clients {w0}x{h0} x1 images/s", {arm: results[arm].throughput for arm in ARMS}))
    peaks = {arm: results[arm].peak_bytes for arm in ARMS}
    rows.append(("peak GPU memory GiB", {arm: None if peak is None else peak / 2**30 for arm, peak in peaks.items()}))
    rows.append(("cold start s (process start to first image)", {arm: results[arm].cold_s for arm in ARMS}))
    rows.append(("warm model swap s", {arm: results[arm].swap_s for arm in ARMS}))
    lines = [
        "| measure | (a) diffusers | (b) engine | (c) HTTP | (b)/(a) | (c)/(a) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, values in rows:
        a, b, c = (values[arm] for arm in ARMS)
        lines.append(f"| {name} | {fmt(a)} | {fmt(b)} | {fmt(c)} | {ratio(b, a)} | {ratio(c, a)} |")
    return lines


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny model on the CPU, 128x128 and 128x192, 4 steps")
    parser.add_argument("--steps", type=int, default=0, help="denoising steps (default 30; 4 with --small)")
    parser.add_argument("--rounds", type=int, default=0, help="timed requests per configuration (3; 1 with --small)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the throughput test")
    parser.add_argument("--workdir", type=Path, help="keep checkpoints, data and logs here (default: a temp dir)")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.arm:  # inside an arm's own process
        plan = Plan(**json.loads(args.plan.read_text()))
        plan.sizes = [tuple(size) for size in plan.sizes]  # type: ignore[misc]
        result = ArmResult()
        {"diffusers": arm_diffusers, "engine": arm_engine}[args.arm](plan, result)
        print(RESULT + json.dumps(asdict(result)), flush=True)
        return

    if args.small:
        # Before torch is imported here; the arms and the server inherit it.
        os.environ["OMP_NUM_THREADS"] = "1"
    started = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="daguerre-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    plan = prepare(args, work)
    built = time.perf_counter() - started
    plan_file = work / "plan.json"
    plan_file.write_text(json.dumps(asdict(plan)))
    results: dict[str, ArmResult] = {}
    results["diffusers"] = run_arm_process("diffusers", plan_file, work / "diffusers.log")
    plan.model_bytes = results["diffusers"].model_bytes
    plan_file.write_text(json.dumps(asdict(plan)))
    results["engine"] = run_arm_process("engine", plan_file, work / "engine.log")
    results["http"] = ArmResult()
    arm_http(plan, results["http"], work / "server.log")

    threads = os.environ.get("OMP_NUM_THREADS", "torch's default")
    print(f"device: {device_name(plan.device)}; torch threads per process: {threads}")
    print(f"daguerre settings: {execution_summary(plan.device)}")
    print(
        f"model: {'tiny SD 1.5 topology' if plan.small else 'full-size SD 1.5'} (random weights, "
        f"{results['engine'].model_bytes / 2**20:.1f} MiB resident); {plan.steps} steps, guidance {GUIDANCE}, "
        f"{SCHEDULER}; medians of {plan.rounds} round(s) after a warm-up; checkpoints built in {built:.1f} s"
    )
    print("ratios: (b)/(a) and (c)/(a); for s/request and memory lower is better, for it/s and images/s higher")
    print()
    print("\n".join(table(plan, results)))
    print()
    failures = [failure for result in results.values() for failure in result.failures]
    checked = sum(result.images for result in results.values())
    if failures:
        print(f"image checks: {len(failures)} of {checked} images failed:")
        for failure in failures[:20]:
            print(f"  {failure}")
        raise SystemExit(1)
    print(f"image checks: all {checked} images the right size, finite and not black")
    print(f"total {time.perf_counter() - started:.1f} s; work dir {work}")


if __name__ == "__main__":
    main()
