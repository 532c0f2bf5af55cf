"""The in-process engine: a fair queue in front of one worker thread that owns the device.

The event loop only waits on events, so the server keeps answering (health, model lists, job
status) while a generation runs. Jobs beyond `max_queue` (running plus waiting) are refused at
once with ServerBusy instead of waiting without bound.

Fairness: the next job is the oldest waiting job of the owner (token) served least recently, so
owners take turns: a token with a hundred jobs queued delays another token's single job by at most
the batch that is running and none of its waiting jobs (round-robin between owners that all have
work; FIFO within one owner).

Batching: the next job takes with it, up to `max_batch_size` images, the waiting jobs that can
share its forward pass (pipelines/batching.py's batch key), picked by the same fair rule; they run
as one pass, each job with its own events, cancel and failure (see _Worker._run). A small CPU pool
encodes a finished batch's PNGs and prepares waiting jobs (prompts, uploads) while the device
denoises.

Events: the worker reports to each job's handle with `loop.call_soon_threadsafe`, in order:
Queued(position) on admission and whenever the position changes, Started, Progress per step or
tile, and one final event. Cancelling a waiting job removes it; a running one stops at its next
step (the progress callback raises JobCancelled on the worker thread), or, in a batch with others
still running, ends there while they go on.

Closing (a SIGTERM, see cli.py) fails the waiting jobs at once, gives the running batch
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
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from daguerre import metrics
from daguerre.engine.client import EngineClient, JobHandle
from daguerre.engine.diffusers_classes import AnimateDiffPipeline, ControlNetModel, DiffusionPipeline
from daguerre.engine.families import family
from daguerre.engine.jobs import (
    BUSY,
    CANCELLED,
    SHUTTING_DOWN,
    STOPPED,
    AuxiliarySpec,
    Cancelled,
    ControlNetJob,
    EmbeddingSpec,
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
from daguerre.engine.loading.embeddings import LoadedEmbedding, holds, load_embeddings
from daguerre.engine.loading.lora import (
    DEFAULT_MAX_ADAPTER_BYTES,
    DEFAULT_MAX_ADAPTERS,
    LoraState,
    activate_loras,
    adapter_name,
    remove_loras,
)
from daguerre.engine.loading.model_files import ModelFiles, is_url
from daguerre.engine.options import ExecutionOptions
from daguerre.engine.pipelines import video
from daguerre.engine.pipelines.annotators import Annotator, canny, load_annotator
from daguerre.engine.pipelines.batching import Prepared, batch_key, decode_upload, images_of, render
from daguerre.engine.pipelines.controlnet import controlnet_images
from daguerre.engine.pipelines.hires_fix import hires_fix
from daguerre.engine.pipelines.image_to_image import unchanged
from daguerre.engine.pipelines.outputs import encode_pngs
from daguerre.engine.pipelines.sampling import condition
from daguerre.engine.pipelines.schedulers import Schedulers
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

# Images one forward pass may carry (setting worker.max_batch_size), and the threads of the CPU
# pool that encodes results and prepares waiting jobs (worker.cpu_threads): two keep up with a
# batch and leave the CPU to the worker. Both measured by bench/batching.py.
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_CPU_THREADS = 2


@dataclass(frozen=True)
class LoadedPipeline:
    pipe: DiffusionPipeline
    # Built from the scheduler config as loaded, before any job swapped the pipeline's scheduler.
    schedulers: Schedulers
    # The LoRAs loaded into this pipeline; they stay loaded, switched per job.
    loras: LoraState = field(default_factory=LoraState)
    # The textual-inversion embeddings loaded into it, by token; they stay loaded.
    embeddings: dict[str, LoadedEmbedding] = field(default_factory=dict)


@dataclass(frozen=True)
class Ahead:
    """What the CPU pool prepared for a waiting job: its upload decoded, and its prompts encoded
    when the pipeline and LoRAs it needs were active (`made_on`: that pipeline and LoRA set)."""

    init_image: Image.Image | None
    prepared: Prepared | None = None
    made_on: tuple[object, ...] | None = None


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
    # Its prompts encoded and its upload decoded on the CPU pool while an earlier batch denoised.
    ahead: Future[Ahead] | None = None

    def emit(self, event: JobEvent) -> None:
        # A closed loop (the app stopped) has nobody listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.handle.push, event)


def _push_all(handles: list[JobHandle], event: JobEvent) -> None:
    for handle in handles:
        handle.push(event)


def _emit_each(entries: list[_Entry], event: JobEvent) -> None:
    """One wake-up of each event loop for the whole batch, not one per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[JobHandle]] = {}
    for entry in entries:
        by_loop.setdefault(entry.loop, []).append(entry.handle)
    for loop, handles in by_loop.items():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_push_all, handles, event)


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

    def take(self, fits: Callable[[_Entry], bool]) -> _Entry | None:
        """The first waiting job, in the order they would start, that `fits`, served as if it
        had come to its turn: batch-mates are chosen by the same rule as the next job."""
        for entry in self.order():
            if fits(entry):
                self.remove(entry)
                self.last_served[entry.owner] = next(self._turns)
                return entry
        return None

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


def _failure(exc: BaseException, job_id: str) -> FinalEvent:
    if isinstance(exc, JobCancelled):
        return Cancelled(CANCELLED)
    if isinstance(exc, DaguerreError):
        return Failed(exc.message, exc.error_id if isinstance(exc, GenerationFailed) else None, exc.status)
    error_id = new_error_id()
    log.error("job %s failed; error id %s", job_id, error_id, exc_info=exc)
    return Failed(f"generation failed; error id {error_id}: the server log has the details", error_id)


class _Worker:
    """One daemon thread and its queue; close() leaves it to finish (or abandon) its last batch.

    Every field is guarded by `wakeup`'s lock (an RLock, so helpers may nest).
    """

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.queue = _FairQueue()
        self.jobs: dict[str, _Entry] = {}
        self.running: list[_Entry] = []  # the batch on the device
        self.delivering: set[Future[None]] = set()  # finished batches' images, encoding on the CPU pool
        self.closing = False
        self.wakeup = threading.Condition()
        self._seq = itertools.count()
        self.thread = threading.Thread(target=self._loop, name="daguerre-engine", daemon=True)
        self.thread.start()

    def admit(self, entry: _Entry) -> None:
        self.jobs[entry.job_id] = entry
        self.queue.add(entry)
        self.reposition()
        self.prepare_ahead([entry])
        self.wakeup.notify()

    def next_seq(self) -> int:
        return next(self._seq)

    def reposition(self) -> None:
        """Tell each waiting job its place, when it changed."""
        ahead = len(self.running)
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

    def end_all(self, entries: list[_Entry], exc: BaseException) -> None:
        with self.wakeup:
            for entry in entries:
                self.end(entry, _failure(exc, entry.job_id))

    def prepare_ahead(self, entries: list[_Entry]) -> None:
        """Start the CPU work of waiting jobs that will run on the pipeline and LoRAs of the
        running batch (the only state their prompt encoding can be sure of) on the CPU pool."""
        if not self.running or self.engine.cpu is None:
            return
        running = self.running[0].job
        if batch_key(running) is None or not isinstance(running, TextToImageJob):
            return
        for entry in entries:
            job = entry.job
            if entry.ahead is not None or batch_key(job) is None or not isinstance(job, TextToImageJob):
                continue
            if (job.model, job.loras) == (running.model, running.loras):
                entry.ahead = self.engine.cpu.submit(self.engine.prepare_ahead, job)

    def _take_batch(self) -> list[_Entry]:
        """The next job and, when it can share its forward pass, its batch-mates: the waiting jobs
        with its batch key, in the order they would start, while their images fit."""
        head = self.queue.pop()
        key = batch_key(head.job)
        room = self.engine.max_batch_size - images_of(head.job)
        batch = [head]
        if key is None:
            return batch

        def fits(entry: _Entry) -> bool:
            return batch_key(entry.job) == key and images_of(entry.job) <= room

        deadline = time.monotonic() + self.engine.batch_window_s
        while room > 0:
            mate = self.queue.take(fits)
            if mate is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.closing:
                    break
                self.wakeup.wait(left)  # admit() notifies
                continue
            batch.append(mate)
            room -= images_of(mate.job)
        return batch

    def _loop(self) -> None:
        try:
            while True:
                with self.wakeup:
                    while not len(self.queue) and not self.closing:
                        self.wakeup.wait()
                    if not len(self.queue):
                        return
                    batch = self._take_batch()
                    self.running = batch
                    self.reposition()
                    self.prepare_ahead(self.queue.order())
                _emit_each(batch, Started())
                with metrics.job_context(",".join(entry.job_id for entry in batch)):
                    self._run(batch)
                with self.wakeup:
                    self.running = []
                    self.reposition()
        finally:
            with self.wakeup:
                delivering = list(self.delivering)
            futures.wait(delivering)

    def _run(self, batch: list[_Entry]) -> None:
        """Run a batch, ending each job by itself: what the batch shares (its model and LoRAs)
        fails them all; a job's own preparation, images and encoding fail only it; a failed pass
        runs each job again alone. A job alone that cannot batch runs as it always did."""
        engine = self.engine
        head = batch[0]
        if len(batch) == 1 and batch_key(head.job) is None:
            try:
                with engine.components:
                    result = engine.run(head.job, self._progress(batch))
            except Exception as exc:
                self.end_all(batch, exc)
                return
            with self.wakeup:
                # Cancelled after its last step: the client asked not to have it.
                self.end(head, Cancelled(CANCELLED) if head.cancelled else Finished(result))
            return
        assert isinstance(head.job, TextToImageJob)  # batch_key() is None for every other job
        try:
            # The model and the LoRAs are the batch's: failing to load them fails every member.
            loaded = engine.load(head.job)
        except Exception as exc:
            self.end_all(batch, exc)
            return
        ready: list[tuple[_Entry, Prepared]] = []
        for entry in batch:
            assert isinstance(entry.job, TextToImageJob)  # a batch-mate has the head's batch key
            try:
                ready.append((entry, engine.prepare(loaded, entry.job, entry.ahead)))
            except Exception as exc:  # a prompt too long, an unreadable upload: that job alone
                self.end_all([entry], exc)
        self._denoise(loaded, ready)

    def _denoise(self, loaded: LoadedPipeline, ready: list[tuple[_Entry, Prepared]]) -> None:
        ready = [(entry, prepared) for entry, prepared in ready if not entry.ended]
        if not ready:
            return
        entries = [entry for entry, _ in ready]
        jobs = [entry.job for entry in entries if isinstance(entry.job, TextToImageJob)]
        try:
            images = self.engine.denoise(loaded, jobs, [prepared for _, prepared in ready], self._progress(entries))
        except JobCancelled:
            return  # every member was cancelled, and has ended
        except Exception as exc:
            if len(ready) == 1:
                self.end_all(entries, exc)
                return
            # A fault of one job (or a batch too large for the device's memory) fails that job alone.
            log.warning("a batch of %d jobs failed; running each alone", len(ready))
            for item in ready:
                self._denoise(loaded, [item])
            return
        for entry, job_images in zip(entries, images, strict=True):
            self._deliver(entry, job_images)

    def _progress(self, members: list[_Entry]) -> ReportProgress:
        # Upscales report tiles, not denoising steps: only diffusion feeds the step histogram.
        job = members[0].job
        kind = None if isinstance(job, UpscaleJob) else "video" if isinstance(job, VideoJob) else "image"
        last_step = time.perf_counter()

        def progress(step: int, total: int) -> None:
            nonlocal last_step
            with self.wakeup:
                for entry in members:
                    if entry.cancelled:
                        self.end(entry, Cancelled(CANCELLED))  # its batch-mates go on
                live = [entry for entry in members if not entry.ended]
            if not live:
                raise JobCancelled(members[0].job_id)
            if kind is not None:
                now = time.perf_counter()
                metrics.denoising_step(kind, now - last_step)
                last_step = now
            _emit_each(live, Progress(step, total))

        return progress

    def _deliver(self, entry: _Entry, images: np.ndarray) -> None:
        """Encode a finished job's images on the CPU pool while the next batch denoises."""

        def encode() -> None:
            with metrics.job_context(entry.job_id):
                try:
                    final: FinalEvent = Finished(self.engine.encode_images(images))
                except Exception as exc:
                    final = _failure(exc, entry.job_id)
            with self.wakeup:
                self.end(entry, Cancelled(CANCELLED) if entry.cancelled else final)

        if self.engine.cpu is None:
            encode()
            return
        with self.wakeup:
            future = self.engine.cpu.submit(encode)
            self.delivering.add(future)
        future.add_done_callback(self._delivered)

    def _delivered(self, future: Future[None]) -> None:
        with self.wakeup:
            self.delivering.discard(future)


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
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_window_s: float = 0.0,
        cpu_threads: int = DEFAULT_CPU_THREADS,
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
        self.max_batch_size = max_batch_size  # images in one forward pass (see batching.py)
        self.batch_window_s = batch_window_s  # how long a batch waits for mates; 0: only those queued
        # Held by the worker while it loads models or switches LoRAs, and by work prepared ahead on
        # the CPU pool while it reads them.
        self.components = threading.RLock()
        # Off the device's path: PNG encoding of finished jobs, prompt encoding and upload decoding of
        # the next ones. None (cpu_threads 0): all of it on the worker, between batches.
        self.cpu = ThreadPoolExecutor(cpu_threads, thread_name_prefix="daguerre-cpu") if cpu_threads else None
        self._worker: _Worker | None = None

    async def start(self) -> None:
        # Restartable: a stopped engine keeps its model cache and can serve a new app.
        if self._worker is None:
            self._worker = _Worker(self)

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
                for running in worker.running:
                    if not running.ended:
                        log.warning("job %s outlived the shutdown grace (%ss); failing it", running.job_id, grace)
                        running.cancelled = True
                        worker.end(running, Failed(STOPPED, status=BUSY))

    def status(self) -> EngineStatus:
        worker = self._worker
        waiting = running = 0
        if worker is not None:
            with worker.wakeup:
                # Running: on the device, or its images being encoded.
                waiting, running = len(worker.queue), len(worker.jobs) - len(worker.queue)
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
        """Run one job on this thread, as a batch of one when it can batch; public so benchmarks
        and tests can call it directly. `progress(step, total)` is called after each denoising
        step or upscaled tile; it may raise JobCancelled to stop the job there."""
        with stage("running the job"):
            if batch_key(job) is None:
                return self._run(job, progress)
            assert isinstance(job, TextToImageJob)
            loaded = self.load(job)
            (images,) = self.denoise(loaded, [job], [self.prepare(loaded, job)], progress)
            return self.encode_images(images)

    # The stages of a batch (the worker runs them with each job's failures kept to itself).

    def load(self, job: TextToImageJob) -> LoadedPipeline:
        """The job's pipeline, with its LoRAs active."""
        with self.components:
            loaded = self.pipeline(job.model)
            self.loras(loaded, job.loras)
        return loaded

    def prepare(self, loaded: LoadedPipeline, job: TextToImageJob, ahead: Future[Ahead] | None = None) -> Prepared:
        """The job's prompts encoded and upload decoded: what was done ahead when it still holds."""
        early = ahead.result() if ahead is not None else None  # its failure is this job's
        if early is not None and early.prepared is not None and early.made_on == (loaded.pipe, loaded.loras.fused):
            return early.prepared
        # Under the lock, so that work prepared ahead cannot swap an embedding's version between the
        # load and the encoding. Each job loads its own: a batch-mate's may differ from the head's.
        with self.components:
            self.embeddings(loaded, job.embeddings)
            self.check_prompts(loaded, job.prompt, job.negative_prompt)
            with stage("encoding the prompt"):
                conditioning = condition(loaded.pipe, job)
        if early is not None:
            return Prepared(conditioning, early.init_image)
        with stage("reading the init image"):
            return Prepared(conditioning, decode_upload(job))

    def prepare_ahead(self, job: TextToImageJob) -> Ahead:
        """prepare(), on the CPU pool while another batch denoises: the upload always; the
        prompts when the job's model is resident with the job's LoRAs active, the state the
        worker keeps while that batch runs (prepare() checks that it still holds)."""
        with stage("reading the init image"):
            init_image = decode_upload(job)
        wanted = tuple((adapter_name(spec), spec.weight) for spec in job.loras)
        with self.components:
            loaded = self.cache.peek(job.model)
            if not isinstance(loaded, LoadedPipeline) or loaded.loras.fused != wanted:
                return Ahead(init_image)
            if not holds(loaded.embeddings, job.embeddings):
                return Ahead(init_image)  # its prompts need tokens the worker has yet to load
            self.check_prompts(loaded, job.prompt, job.negative_prompt)
            with stage("encoding the prompt"):
                prepared = Prepared(condition(loaded.pipe, job), init_image)
            return Ahead(init_image, prepared, (loaded.pipe, loaded.loras.fused))

    def denoise(
        self,
        loaded: LoadedPipeline,
        jobs: list[TextToImageJob],
        prepared: list[Prepared],
        progress: ReportProgress | None = None,
    ) -> list[np.ndarray]:
        with stage("denoising"):
            return render(loaded.pipe, loaded.schedulers, jobs, prepared, progress)

    @staticmethod
    def encode_images(images: np.ndarray) -> ImagesResult:
        """Check and encode one job's images (the worker runs this on the CPU pool)."""
        with stage("encoding the images"):
            return ImagesResult(tuple(encode_pngs(images, "denoising and decoding the image")))

    def _run(self, job: Job, progress: ReportProgress | None) -> Result:
        if isinstance(job, UpscaleJob):
            upscaler = self.upscaler(job.upscaler)
            with stage("upscaling the image"):
                return ImagesResult((upscale(upscaler, job, progress),))
        if isinstance(job, HiresFixJob):
            loaded = self.pipeline(job.render.model)
            self.embeddings(loaded, job.render.embeddings)
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
        self.embeddings(loaded, job.embeddings)
        self.check_prompts(loaded, job.prompt, job.negative_prompt)
        self.loras(loaded, job.loras)
        if isinstance(job, ControlNetJob):
            control_map = self.control_map(job)
            controlnet = self.controlnet(job.controlnet)
            with stage("denoising with the ControlNet"):
                images = controlnet_images(loaded.pipe, loaded.schedulers, job, controlnet, control_map, progress)
            return ImagesResult(tuple(images), control_image=encode_png(control_map))
        if isinstance(job, ImageToImageJob) and unchanged(job):
            return ImagesResult((job.init_image,) * len(job.seeds))
        raise TypeError(f"{type(job).__name__} jobs run in batches (LocalEngine.run)")

    def pipeline(self, spec: ModelSpec) -> LoadedPipeline:
        def load() -> LoadedPipeline:
            pipe = family(spec.family).load(self._on_disk(spec), self.device, self.dtype, self._cache_dir)
            prepare(pipe, self.execution, self.device)
            return LoadedPipeline(
                pipe, Schedulers(pipe.scheduler.config), LoraState(self._max_loras, self._max_lora_bytes)
            )

        with stage(f"loading model {spec.id} (version {spec.version})"):
            return self.cache.get(spec, load, self._estimate(spec))

    def _on_disk(self, spec: ModelSpec) -> ModelSpec:
        """`spec` with local paths (its VAE's too): a URL's file is fetched to this node's copies
        (once). The caches stay keyed by the catalog's spec, so a resident model is never fetched."""
        local = self.model_files.local
        vae = spec.vae
        if vae is not None and is_url(vae.path):
            spec = replace(spec, vae=replace(vae, path=str(local(vae.path, vae.sha256))))
        return replace(spec, path=str(local(spec.path, spec.sha256))) if is_url(spec.path) else spec

    def _estimate(self, spec: ModelSpec) -> int:
        return estimate_bytes(self.model_files.peek(spec.path, spec.sha256) or spec.path)

    def check_prompts(self, loaded: LoadedPipeline, prompt: str, negative_prompt: str) -> None:
        check_prompt_length(loaded.pipe.tokenizer, prompt, negative_prompt, self._max_prompt_chunks)

    def embeddings(self, loaded: LoadedPipeline, embeddings: tuple[EmbeddingSpec, ...]) -> None:
        if embeddings:
            with stage("loading embedding " + ", ".join(f"{spec.id} (version {spec.version})" for spec in embeddings)):
                load_embeddings(loaded.pipe, loaded.embeddings, embeddings, self.model_files.local)

    def loras(self, loaded: LoadedPipeline, loras: tuple[LoraSpec, ...]) -> None:
        names = ", ".join(f"{spec.id} (version {spec.version})" for spec in loras)
        before = set(loaded.loras.loaded)
        fused_before = loaded.loras.fused
        try:
            with stage(f"loading LoRA {names}" if loras else "removing LoRAs"):
                activate_loras(loaded.pipe, loaded.loras, loras, self.model_files.local)
                if loaded.loras.fused != fused_before:
                    refresh_fused_projections(loaded.pipe.unet)
        finally:
            # A pipeline grows and shrinks as LoRAs load and unload: keep the budget true. Only
            # then: measuring every resident model costs milliseconds a job.
            if set(loaded.loras.loaded) != before:
                self.cache.remeasure()

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
            key = AnimatedKey(job.model, adapter)
            built = key not in self.cache
            animated = self.cache.get(key, build, estimate)
            if built:  # build() took the base pipeline's LoRAs out
                self.cache.remeasure()
        with stage("denoising the video"):
            return video.run_animatediff(animated, base.schedulers.config, job, progress)
