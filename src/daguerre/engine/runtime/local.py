"""The in-process engine: a fair queue in front of one worker thread that owns the device.

The event loop only waits on events, so the server keeps answering (health, model lists, job
status) while a generation runs. Jobs beyond `max_queue` (running plus waiting) are refused at
once with ServerBusy instead of waiting without bound.

Fairness: the next job is the oldest waiting job of the owner (token) served least recently, so
owners take turns: a token with a hundred jobs queued delays another token's single job by at most
the job that is running and none of its waiting ones (round-robin between owners that all have
work; FIFO within one owner).

Events: the worker reports to each job's handle with `loop.call_soon_threadsafe`, in order:
Queued(position) on admission and whenever the position changes, Started, Progress per step or
tile, and one final event. Cancelling a waiting job removes it; a running one stops at its next
step (the progress callback raises JobCancelled on the worker thread).

Closing (a SIGTERM, see cli.py) fails the waiting jobs at once, gives the running one
`shutdown_grace_s` to finish, then fails it and stops it at its next step. The worker is a daemon
thread, so a job that runs on past the grace period cannot keep the process alive
(ThreadPoolExecutor's threads are joined at interpreter exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from daguerre import metrics
from daguerre.engine.client import EngineClient, JobHandle
from daguerre.engine.diffusers_classes import AnimateDiffPipeline, ControlNetModel, StableDiffusionPipeline
from daguerre.engine.jobs import (
    BUSY,
    CANCELLED,
    SHUTTING_DOWN,
    STOPPED,
    AuxiliarySpec,
    Cancelled,
    ControlNetJob,
    EngineStatus,
    Failed,
    FinalEvent,
    Finished,
    HiresFixJob,
    ImagesResult,
    ImageToImageJob,
    Job,
    JobEvent,
    LoraSpec,
    ModelSpec,
    Progress,
    Queued,
    ReportProgress,
    ResidentModel,
    Result,
    Started,
    TextToImageJob,
    UpscaleJob,
    VideoJob,
    VideoResult,
)
from daguerre.engine.loading.checkpoints import load_text_to_image
from daguerre.engine.loading.lora import (
    DEFAULT_MAX_ADAPTER_BYTES,
    DEFAULT_MAX_ADAPTERS,
    LoraState,
    activate_loras,
    remove_loras,
)
from daguerre.engine.loading.model_files import ModelFiles, is_url
from daguerre.engine.options import ExecutionOptions
from daguerre.engine.pipelines import video
from daguerre.engine.pipelines.annotators import Annotator, canny, load_annotator
from daguerre.engine.pipelines.controlnet import controlnet_images
from daguerre.engine.pipelines.hires_fix import hires_fix
from daguerre.engine.pipelines.image_to_image import image_to_image
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.engine.pipelines.text_to_image import text_to_image
from daguerre.engine.pipelines.upscaling import Upscaler, load_upscaler, upscale
from daguerre.engine.pipelines.video_encoding import encode_mp4
from daguerre.engine.prompts.encoding import check_prompt_length
from daguerre.engine.runtime.devices import pick_device, pick_dtype
from daguerre.engine.runtime.execution import prepare, refresh_fused_projections, unfused
from daguerre.engine.runtime.failures import JobCancelled, new_error_id, stage
from daguerre.engine.runtime.memory import (
    default_budget,
    estimate_bytes,
    host_memory,
    move_modules,
    moved,
    resident_bytes,
)
from daguerre.engine.runtime.model_cache import HostTier, ModelCache, label
from daguerre.errors import DaguerreError, GenerationFailed, ServerBusy
from daguerre.imaging import encode_png

log = logging.getLogger(__name__)

# Default byte budgets, as shares of the device's memory (GPU memory on CUDA, system RAM on CPU
# and MPS); the settings `model_cache.max_bytes` and `model_cache.auxiliary_max_bytes` override
# them. Sizes counted from SD 1.5's layer shapes in fp16, matching the published ones: UNet
# 1.72 GB, VAE 0.17 GB, text encoder 0.25 GB (a pipeline, 2.1 GB), ControlNet 0.72 GB. 60% of a
# 24 GB GPU keeps six SD 1.5 pipelines resident and leaves 9.6 GB for activations; 10% holds three
# ControlNets. The demo model measures about 12 MB in float32.
MODEL_CACHE_FRACTION = 0.6
AUXILIARY_CACHE_FRACTION = 0.1
# The host tier (`model_cache.host_max_bytes`) on CUDA: a quarter of system RAM, pinned. 64 GB of
# RAM keeps seven SD 1.5 pipelines (2.1 GB each) a copy away from the GPU and leaves most of the
# RAM to the OS and the page cache. On CPU and MPS the device tier already is system RAM.
HOST_CACHE_FRACTION = 0.25


@dataclass(frozen=True)
class LoadedPipeline:
    pipe: StableDiffusionPipeline
    # Built from the scheduler config as loaded, before any job swapped the pipeline's scheduler.
    schedulers: Schedulers
    # The LoRAs loaded into this pipeline; they stay loaded, switched per job.
    loras: LoraState = field(default_factory=LoraState)


@dataclass(frozen=True)
class AnimatedKey:
    """Cache key of an SD checkpoint animated by an AnimateDiff motion adapter."""

    base: ModelSpec
    adapter: ModelSpec

    @property
    def id(self) -> str:
        return f"{self.base.id}+{self.adapter.id}"

    @property
    def version(self) -> str:
        return f"{self.base.version}+{self.adapter.version}"


@dataclass(eq=False)
class _Entry:
    """A job in the engine, from admission to its final event."""

    job_id: str
    job: Job
    owner: str
    handle: JobHandle
    loop: asyncio.AbstractEventLoop
    seq: int  # admission order
    position: int | None = None  # last Queued position reported
    # Set by cancel() or the shutdown deadline; read by the worker at each step.
    cancelled: bool = False
    ended: bool = False

    def emit(self, event: JobEvent) -> None:
        # A closed loop (the app stopped) has nobody listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.handle.push, event)


class _FairQueue:
    """Waiting jobs by owner; the next one is the oldest of the owner served least recently."""

    def __init__(self) -> None:
        self.by_owner: dict[str, deque[_Entry]] = {}
        self.last_served: dict[str, int] = {}
        self._turns = itertools.count()

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.by_owner.values())

    def add(self, entry: _Entry) -> None:
        self.by_owner.setdefault(entry.owner, deque()).append(entry)

    def remove(self, entry: _Entry) -> bool:
        entries = self.by_owner.get(entry.owner)
        if entries is None or entry not in entries:
            return False
        entries.remove(entry)
        if not entries:
            del self.by_owner[entry.owner]
        return True

    def drain(self) -> list[_Entry]:
        entries = self.order()
        self.by_owner.clear()
        return entries

    @staticmethod
    def _next_owner(by_owner: dict[str, deque[_Entry]], last_served: dict[str, int]) -> str:
        return min(by_owner, key=lambda owner: (last_served.get(owner, -1), by_owner[owner][0].seq))

    def pop(self) -> _Entry:
        owner = self._next_owner(self.by_owner, self.last_served)
        entries = self.by_owner[owner]
        entry = entries.popleft()
        if not entries:
            del self.by_owner[owner]
        self.last_served[owner] = next(self._turns)
        return entry

    def order(self) -> list[_Entry]:
        """The waiting jobs in the order they will start, if nothing else arrives."""
        by_owner = {owner: deque(entries) for owner, entries in self.by_owner.items()}
        last_served = dict(self.last_served)
        turn = max(last_served.values(), default=0) + 1
        order = []
        while by_owner:
            owner = self._next_owner(by_owner, last_served)
            order.append(by_owner[owner].popleft())
            if not by_owner[owner]:
                del by_owner[owner]
            last_served[owner] = turn
            turn += 1
        return order


class _Worker:
    """One daemon thread and its queue; close() leaves it to finish (or abandon) its last job.

    Every field is guarded by `wakeup`'s lock (an RLock, so helpers may nest).
    """

    def __init__(self, run: Callable[[Job, ReportProgress], Result]) -> None:
        self.queue = _FairQueue()
        self.jobs: dict[str, _Entry] = {}
        self.running: _Entry | None = None
        self.closing = False
        self.wakeup = threading.Condition()
        self._seq = itertools.count()
        self.thread = threading.Thread(target=self._loop, args=(run,), name="daguerre-engine", daemon=True)
        self.thread.start()

    def admit(self, entry: _Entry) -> None:
        self.jobs[entry.job_id] = entry
        self.queue.add(entry)
        self.reposition()
        self.wakeup.notify()

    def next_seq(self) -> int:
        return next(self._seq)

    def reposition(self) -> None:
        """Tell each waiting job its place, when it changed."""
        ahead = 1 if self.running is not None else 0
        metrics.queue_depth(len(self.queue))
        for index, entry in enumerate(self.queue.order()):
            if entry.position != ahead + index:
                entry.position = ahead + index
                entry.emit(Queued(entry.position))

    def end(self, entry: _Entry, event: FinalEvent) -> None:
        """The job's one final event; later outcomes (a job failed by the shutdown deadline that
        finishes anyway) go nowhere."""
        if entry.ended:
            return
        entry.ended = True
        self.jobs.pop(entry.job_id, None)
        entry.emit(event)

    def _loop(self, run: Callable[[Job, ReportProgress], Result]) -> None:
        while True:
            with self.wakeup:
                while not len(self.queue) and not self.closing:
                    self.wakeup.wait()
                if not len(self.queue):
                    return
                entry = self.queue.pop()
                self.running = entry
                self.reposition()
            entry.emit(Started())
            final = self._run(run, entry)
            with self.wakeup:
                self.running = None
                self.end(entry, final)
                self.reposition()

    @staticmethod
    def _run(run: Callable[[Job, ReportProgress], Result], entry: _Entry) -> FinalEvent:
        # Upscales report tiles, not denoising steps: only diffusion feeds the step histogram.
        kind = None if isinstance(entry.job, UpscaleJob) else "video" if isinstance(entry.job, VideoJob) else "image"
        last_step = time.perf_counter()

        def progress(step: int, total: int) -> None:
            nonlocal last_step
            if entry.cancelled:
                raise JobCancelled(entry.job_id)
            if kind is not None:
                now = time.perf_counter()
                metrics.denoising_step(kind, now - last_step)
                last_step = now
            entry.emit(Progress(step, total))

        try:
            with metrics.job_context(entry.job_id):  # the engine's log lines carry the job's id
                result = run(entry.job, progress)
        except JobCancelled:
            return Cancelled(CANCELLED)
        except DaguerreError as exc:
            return Failed(exc.message, exc.error_id if isinstance(exc, GenerationFailed) else None, exc.status)
        except Exception:
            error_id = new_error_id()
            log.exception("job %s failed; error id %s", entry.job_id, error_id)
            return Failed(f"generation failed; error id {error_id}: the server log has the details", error_id)
        # Cancelled after its last step: the client asked not to have it.
        return Cancelled(CANCELLED) if entry.cancelled else Finished(result)


class LocalEngine(EngineClient):
    def __init__(
        self,
        cache_dir: Path,
        device: str = "auto",
        dtype: str = "auto",
        max_loaded_models: int | None = None,
        max_queue: int = 32,
        video_cpu_offload: bool = False,
        video_vae_tiling: bool = True,
        model_cache_bytes: int | None = None,
        auxiliary_cache_bytes: int | None = None,
        max_loras: int = DEFAULT_MAX_ADAPTERS,
        max_lora_bytes: int = DEFAULT_MAX_ADAPTER_BYTES,
        shutdown_grace_s: float = 30.0,
        max_prompt_chunks: int = 40,
        model_files: ModelFiles | None = None,
        host_cache_bytes: int | None = None,
        execution: ExecutionOptions | None = None,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.execution = execution or ExecutionOptions()
        if model_cache_bytes is None:
            model_cache_bytes = default_budget(self.device, MODEL_CACHE_FRACTION)
        if auxiliary_cache_bytes is None:
            auxiliary_cache_bytes = default_budget(self.device, AUXILIARY_CACHE_FRACTION)
        if host_cache_bytes is None:
            host_cache_bytes = int(host_memory() * HOST_CACHE_FRACTION) if self.device.type == "cuda" else 0
        self.cache: ModelCache[ModelSpec | AnimatedKey] = ModelCache(
            model_cache_bytes,
            max_loaded_models,
            name="model",
            host=HostTier(host_cache_bytes, self._to_host, self._to_device),
        )
        # ControlNets, annotators and upscalers, apart so that loading one never evicts a checkpoint.
        self.auxiliaries: ModelCache[tuple[str, ModelSpec | AuxiliarySpec]] = ModelCache(
            auxiliary_cache_bytes, name="auxiliary"
        )
        self._max_loras = max_loras
        self._max_lora_bytes = max_lora_bytes
        self._cache_dir = cache_dir
        self._max_queue = max_queue
        self._video_cpu_offload = video_cpu_offload
        self._video_vae_tiling = video_vae_tiling
        self._shutdown_grace_s = shutdown_grace_s
        self._max_prompt_chunks = max_prompt_chunks
        # Model files registered by URL are loaded from this node's copies.
        self.model_files = model_files or ModelFiles(cache_dir / "model-files", 200 * 1024**3)
        self._worker: _Worker | None = None

    async def start(self) -> None:
        # Restartable: a stopped engine keeps its model cache and can serve a new app.
        if self._worker is None:
            self._worker = _Worker(self.run)

    async def close(self, grace_s: float | None = None) -> None:
        """Fail the waiting jobs now, let the running one finish within the grace period, then
        fail it and stop it at its next step; idempotent, and a second call returns at once."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        grace = self._shutdown_grace_s if grace_s is None else grace_s
        with worker.wakeup:
            worker.closing = True
            for entry in worker.queue.drain():
                worker.end(entry, Failed(SHUTTING_DOWN, status=BUSY))
            worker.wakeup.notify_all()
        await asyncio.to_thread(worker.thread.join, grace)
        if worker.thread.is_alive():
            with worker.wakeup:
                running = worker.running
                if running is not None and not running.ended:
                    log.warning("a job outlived the shutdown grace period (%ss); failing it", grace)
                    running.cancelled = True
                    worker.end(running, Failed(STOPPED, status=BUSY))

    def status(self) -> EngineStatus:
        worker = self._worker
        waiting = running = 0
        if worker is not None:
            with worker.wakeup:
                waiting, running = len(worker.queue), int(worker.running is not None)
        resident = tuple(ResidentModel(label(key), size) for key, size in self.cache.resident())
        return EngineStatus(
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            queued=waiting + running,
            waiting=waiting,
            loaded_models=tuple(model.name for model in resident),
            resident=resident,
            budget_bytes=self.cache.budget_bytes,
            used_bytes=self.cache.used_bytes(),
            auxiliary_resident=tuple(ResidentModel(label(key), size) for key, size in self.auxiliaries.resident()),
            auxiliary_budget_bytes=self.auxiliaries.budget_bytes,
            auxiliary_used_bytes=self.auxiliaries.used_bytes(),
            host_resident=tuple(ResidentModel(label(key), size) for key, size in self.cache.host_resident()),
            host_budget_bytes=self.cache.host.budget_bytes if self.cache.host is not None else 0,
            host_used_bytes=self.cache.host_used_bytes(),
            device_peak_bytes=torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
        )

    async def health(self) -> EngineStatus:
        # In-process, the status is a few counters read under the queue's lock.
        return self.status()

    async def submit(self, job_id: str, job: Job, owner: str, *, readmitted: bool = False) -> JobHandle:
        worker = self._worker
        if worker is None:
            raise ServerBusy("the engine is not running (the server is starting or shutting down); try again shortly")
        handle = JobHandle(job_id, self.cancel)
        loop = asyncio.get_running_loop()
        with worker.wakeup:
            if worker.closing:
                raise ServerBusy(SHUTTING_DOWN)
            pending = len(worker.jobs)
            if pending >= self._max_queue and not readmitted:
                raise ServerBusy(
                    f"server busy: {pending} jobs are queued (max_queue {self._max_queue}); try again shortly"
                )
            if job_id in worker.jobs:
                raise ValueError(f"job {job_id} is already in the engine")
            worker.admit(_Entry(job_id, job, owner, handle, loop, worker.next_seq()))
        return handle

    def cancel(self, job_id: str) -> bool:
        worker = self._worker
        if worker is None:
            return False
        with worker.wakeup:
            entry = worker.jobs.get(job_id)
            if entry is None or entry.ended:
                return False
            if worker.queue.remove(entry):
                worker.end(entry, Cancelled(CANCELLED))
                worker.reposition()
            else:
                entry.cancelled = True  # running: it stops at its next step
            return True

    def run(self, job: Job, progress: ReportProgress | None = None) -> Result:
        """Run one job on this thread; public so benchmarks and tests can call it directly.
        `progress(step, total)` is called after each denoising step or upscaled tile; it may
        raise JobCancelled to stop the job there."""
        try:
            with stage("running the job"):
                return self._run(job, progress)
        finally:
            # Pipelines grow and shrink as LoRAs load and unload: keep the budget true.
            self.cache.remeasure()

    def _run(self, job: Job, progress: ReportProgress | None) -> Result:
        if isinstance(job, UpscaleJob):
            upscaler = self.upscaler(job.upscaler)
            with stage("upscaling the image"):
                return ImagesResult((upscale(upscaler, job, progress),))
        if isinstance(job, HiresFixJob):
            loaded = self.pipeline(job.render.model)
            self.check_prompts(loaded, job.render.prompt, job.render.negative_prompt)
            # The re-render uses the original inference's LoRAs too.
            self.loras(loaded, job.render.loras)
            hires_upscaler = self.upscaler(job.upscaler) if job.upscaler else None
            with stage("re-rendering the upscaled image (hires fix)"):
                return ImagesResult((hires_fix(loaded.pipe, loaded.schedulers, hires_upscaler, job, progress),))
        if isinstance(job, VideoJob):
            frames = self.video_frames(job, progress)
            with stage("encoding the video"):
                return VideoResult(encode_mp4(frames, job.fps))
        if not isinstance(job, TextToImageJob):
            raise TypeError(f"unknown job type {type(job).__name__}")
        loaded = self.pipeline(job.model)
        self.check_prompts(loaded, job.prompt, job.negative_prompt)
        self.loras(loaded, job.loras)
        if isinstance(job, ControlNetJob):
            control_map = self.control_map(job)
            controlnet = self.controlnet(job.controlnet)
            with stage("denoising with the ControlNet"):
                images = controlnet_images(loaded.pipe, loaded.schedulers, job, controlnet, control_map, progress)
            return ImagesResult(tuple(images), control_image=encode_png(control_map))
        with stage("denoising"):
            if isinstance(job, ImageToImageJob):
                return ImagesResult(tuple(image_to_image(loaded.pipe, loaded.schedulers, job, progress)))
            return ImagesResult(tuple(text_to_image(loaded.pipe, loaded.schedulers, job, progress)))

    def pipeline(self, spec: ModelSpec) -> LoadedPipeline:
        def load() -> LoadedPipeline:
            pipe = load_text_to_image(self._on_disk(spec), self.device, self.dtype, self._cache_dir)
            prepare(pipe, self.execution, self.device)
            return LoadedPipeline(
                pipe, Schedulers(pipe.scheduler.config), LoraState(self._max_loras, self._max_lora_bytes)
            )

        with stage(f"loading model {spec.id} (version {spec.version})"):
            return self.cache.get(spec, load, self._estimate(spec))

    def _on_disk(self, spec: ModelSpec) -> ModelSpec:
        """`spec` with a local path: a URL's file is fetched to this node's copies (once). The
        caches stay keyed by the catalog's spec, so a resident model is never fetched."""
        if not is_url(spec.path):
            return spec
        return replace(spec, path=str(self.model_files.local(spec.path, spec.sha256)))

    def _estimate(self, spec: ModelSpec) -> int:
        return estimate_bytes(self.model_files.peek(spec.path, spec.sha256) or spec.path)

    def check_prompts(self, loaded: LoadedPipeline, prompt: str, negative_prompt: str) -> None:
        check_prompt_length(loaded.pipe.tokenizer, prompt, negative_prompt, self._max_prompt_chunks)

    def loras(self, loaded: LoadedPipeline, loras: tuple[LoraSpec, ...]) -> None:
        names = ", ".join(f"{spec.id} (version {spec.version})" for spec in loras)
        with stage(f"loading LoRA {names}" if loras else "removing LoRAs"):
            before = loaded.loras.fused
            activate_loras(loaded.pipe, loaded.loras, loras)
            if loaded.loras.fused != before:
                refresh_fused_projections(loaded.pipe.unet)

    def _to_host(self, value: object) -> bool:
        """Move a pipeline evicted from the device to host memory (pinned on CUDA), with the base
        weights its LoRA state keeps; other kinds of entries are dropped."""
        if not isinstance(value, LoadedPipeline) or self.device.type == "cpu":
            # On a CPU the device tier is host memory already: keeping the entry is all it takes.
            return isinstance(value, LoadedPipeline)
        self._move(value, torch.device("cpu"), pin=self.device.type == "cuda")
        return True

    def _to_device(self, value: object) -> None:
        if isinstance(value, LoadedPipeline) and self.device.type != "cpu":
            self._move(value, self.device, pin=False)

    @staticmethod
    def _move(loaded: LoadedPipeline, device: torch.device, pin: bool) -> None:
        modules = [module for module in loaded.pipe.components.values() if isinstance(module, torch.nn.Module)]
        move_modules(modules, device, pin)
        for layer, weight in loaded.loras.originals.items():
            loaded.loras.originals[layer] = moved(weight, device, pin)

    def upscaler(self, spec: ModelSpec) -> Upscaler:
        # With the ControlNets and annotators: small models that must not evict a checkpoint.
        with stage(f"loading upscaler {spec.id} (version {spec.version})"):
            return self.auxiliaries.get(
                ("upscaler", spec),
                lambda: load_upscaler(self._on_disk(spec), self.device, self.dtype),
                self._estimate(spec),
            )

    def controlnet(self, spec: AuxiliarySpec) -> ControlNetModel:
        def load() -> ControlNetModel:
            model: ControlNetModel = ControlNetModel.from_pretrained(spec.path, dtype=self.dtype, local_files_only=True)
            # typeshed types functools.wraps (ModelMixin.to is wrapped) as an unbound function.
            model.to(self.device)  # type: ignore[arg-type]
            return model

        with stage(f"loading ControlNet {spec.id} (version {spec.version})"):
            return self.auxiliaries.get(("controlnet", spec), load, estimate_bytes(spec.path))

    def control_map(self, job: ControlNetJob) -> Image.Image:
        image = Image.open(io.BytesIO(job.control_image)).convert("RGB")
        if not job.preprocess:
            return image
        if job.controlnet.kind == "canny":
            with stage("annotating the control image"):
                return canny(image)
        annotator = job.annotator
        if annotator is None:
            raise ValueError(f"a {job.controlnet.kind} ControlNet job needs an annotator or preprocess=False")
        with stage(f"loading annotator {annotator.id} (version {annotator.version})"):
            annotate: Annotator = self.auxiliaries.get(
                ("annotator", annotator), lambda: load_annotator(annotator, self.device), estimate_bytes(annotator.path)
            )
        with stage("annotating the control image"):
            return annotate(image)

    def video_frames(self, job: VideoJob, progress: ReportProgress | None = None) -> np.ndarray:
        if job.architecture == "wan":
            with stage(f"loading video model {job.model.id} (version {job.model.version})"):
                pipe = self.cache.get(
                    job.model,
                    lambda: video.load_wan(
                        job.model, self.device, self.dtype, self._video_cpu_offload, self._video_vae_tiling
                    ),
                    estimate_bytes(job.model.path),
                )
            with stage("denoising the video"):
                return video.run_wan(pipe, job, progress)
        if job.motion_adapter is None:
            raise ValueError("an AnimateDiff job needs a motion adapter")
        base = self.pipeline(job.model)
        self.check_prompts(base, job.prompt, job.negative_prompt)
        # The motion pipeline shares the base text encoder, so no LoRA of an earlier image job may
        # stay active; and it copies the base UNet's weights when built, which needs plain layers.
        self.loras(base, ())
        adapter = job.motion_adapter

        def build() -> AnimateDiffPipeline:
            remove_loras(base.pipe, base.loras)
            with unfused(base.pipe.unet):
                return video.animatediff_pipeline(base.pipe, video.load_motion_adapter(adapter, self.dtype))

        with stage(f"loading motion adapter {adapter.id} (version {adapter.version})"):
            # The new part is a copy of the UNet with the motion modules: about the adapter's files
            # plus the UNet's tensors.
            estimate = estimate_bytes(adapter.path) + resident_bytes(base.pipe.unet)
            animated = self.cache.get(AnimatedKey(job.model, adapter), build, estimate)
        with stage("denoising the video"):
            return video.run_animatediff(animated, base.schedulers.config, job, progress)
