"""The in-process engine: one worker thread owns the device and runs jobs in arrival order.

The event loop only waits on futures, so the server keeps answering (health, model lists) while a
generation runs. Jobs beyond `max_queue` (running plus waiting) are refused at once with
ServerBusy instead of waiting without bound.

Closing (a SIGTERM, see cli.py) fails the waiting jobs at once, gives the running one
`shutdown_grace_s` to finish, then fails it too; every failure reaches its request, which refunds
it. The worker is a daemon thread, so a job that runs on past the grace period cannot keep the
process alive (ThreadPoolExecutor's threads are joined at interpreter exit).
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image

from daguerre.engine.client import EngineClient
from daguerre.engine.diffusers_classes import AnimateDiffPipeline, ControlNetModel, StableDiffusionPipeline
from daguerre.engine.jobs import (
    AuxiliarySpec,
    ControlNetJob,
    EngineStatus,
    HiresFixJob,
    ImagesResult,
    ImageToImageJob,
    Job,
    LoraSpec,
    ModelSpec,
    ResidentModel,
    Result,
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
from daguerre.engine.pipelines import video
from daguerre.engine.pipelines.annotators import Annotator, canny, load_annotator
from daguerre.engine.pipelines.controlnet import controlnet_images
from daguerre.engine.pipelines.hires_fix import hires_fix
from daguerre.engine.pipelines.image_to_image import image_to_image
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.engine.pipelines.text_to_image import text_to_image
from daguerre.engine.pipelines.upscaling import Upscaler, load_upscaler, upscale
from daguerre.engine.pipelines.video_encoding import encode_mp4
from daguerre.engine.runtime.devices import pick_device, pick_dtype
from daguerre.engine.runtime.failures import stage
from daguerre.engine.runtime.memory import default_budget, estimate_bytes, resident_bytes
from daguerre.engine.runtime.model_cache import ModelCache, label
from daguerre.errors import ServerBusy
from daguerre.imaging import encode_png

log = logging.getLogger(__name__)

# Default byte budgets, as shares of the device's memory (GPU memory on CUDA, system RAM on CPU
# and MPS); the settings `model_cache.max_bytes` and `model_cache.auxiliary_max_bytes` override
# them. Sizes counted from SD 1.5's layer shapes in fp16, matching the published ones: UNet
# 1.72 GB, VAE 0.17 GB, text encoder 0.25 GB (a pipeline, 2.1 GB), ControlNet 0.72 GB. 60% of a
# 24 GB GPU keeps six SD 1.5 pipelines resident and leaves 9.6 GB for activations; 10% holds three
# ControlNets. The demo model measures 16 MB in float32.
MODEL_CACHE_FRACTION = 0.6
AUXILIARY_CACHE_FRACTION = 0.1


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


SHUTTING_DOWN = "the server is shutting down and this request did not start; its credits were refunded"
STOPPED = (
    "the server is shutting down and this job did not finish within the grace period "
    "(setting shutdown_grace_s); its credits were refunded"
)


def _settle(future: Future[Result], outcome: Result | BaseException) -> None:
    # A job failed by close() may still end on the worker later; its outcome then goes nowhere.
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass


class _Worker:
    """One daemon thread and its queue; close() leaves it to finish (or abandon) its last job."""

    def __init__(self, run: Callable[[Job], Result]) -> None:
        self.queue: deque[tuple[Job, Future[Result]]] = deque()
        self.running: Future[Result] | None = None
        self.closing = False
        self.wakeup = threading.Condition()
        self.thread = threading.Thread(target=self._loop, args=(run,), name="daguerre-engine", daemon=True)
        self.thread.start()

    def _loop(self, run: Callable[[Job], Result]) -> None:
        while True:
            with self.wakeup:
                while not self.queue and not self.closing:
                    self.wakeup.wait()
                if not self.queue:
                    return
                job, future = self.queue.popleft()
                # False when the request was cancelled (client gone) while the job waited.
                if not future.set_running_or_notify_cancel():
                    continue
                self.running = future
            try:
                _settle(future, run(job))
            except BaseException as exc:
                _settle(future, exc)
            finally:
                with self.wakeup:
                    self.running = None


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
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        if model_cache_bytes is None:
            model_cache_bytes = default_budget(self.device, MODEL_CACHE_FRACTION)
        if auxiliary_cache_bytes is None:
            auxiliary_cache_bytes = default_budget(self.device, AUXILIARY_CACHE_FRACTION)
        self.cache: ModelCache[ModelSpec | AnimatedKey] = ModelCache(model_cache_bytes, max_loaded_models, name="model")
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
        self._pending = 0
        self._lock = threading.Lock()
        self._worker: _Worker | None = None

    async def start(self) -> None:
        # Restartable: a stopped engine keeps its model cache and can serve a new app.
        if self._worker is None:
            self._worker = _Worker(self.run)

    async def close(self) -> None:
        """Fail the waiting jobs now, let the running one finish within the grace period, then
        fail it; idempotent, and a second call returns at once."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        with worker.wakeup:
            worker.closing = True
            waiting = list(worker.queue)
            worker.queue.clear()
            worker.wakeup.notify_all()
        for _job, future in waiting:
            if future.set_running_or_notify_cancel():
                future.set_exception(ServerBusy(SHUTTING_DOWN))
        await asyncio.to_thread(worker.thread.join, self._shutdown_grace_s)
        if worker.thread.is_alive():
            with worker.wakeup:
                running = worker.running
            if running is not None:
                log.warning("a job outlived the shutdown grace period (%ss); failing it", self._shutdown_grace_s)
                _settle(running, ServerBusy(STOPPED))

    def status(self) -> EngineStatus:
        resident = tuple(ResidentModel(label(key), size) for key, size in self.cache.resident())
        return EngineStatus(
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            queued=self._pending,
            loaded_models=tuple(model.name for model in resident),
            resident=resident,
            budget_bytes=self.cache.budget_bytes,
            used_bytes=self.cache.used_bytes(),
            auxiliary_resident=tuple(ResidentModel(label(key), size) for key, size in self.auxiliaries.resident()),
            auxiliary_budget_bytes=self.auxiliaries.budget_bytes,
            auxiliary_used_bytes=self.auxiliaries.used_bytes(),
        )

    @overload
    async def submit(self, job: VideoJob) -> VideoResult: ...
    @overload
    async def submit(self, job: TextToImageJob | UpscaleJob | HiresFixJob) -> ImagesResult: ...
    async def submit(self, job: Job) -> Result:
        worker = self._worker
        if worker is None:
            raise ServerBusy("the engine is not running (the server is starting or shutting down); try again shortly")
        with self._lock:
            if self._pending >= self._max_queue:
                raise ServerBusy(
                    f"server busy: {self._pending} jobs are queued (max_queue {self._max_queue}); try again shortly"
                )
            self._pending += 1
        future: Future[Result] = Future()
        # Released when the job ends, not when its caller stops waiting: a request cancelled by a
        # client disconnect still occupies the worker until its job finishes.
        future.add_done_callback(self._release)
        with worker.wakeup:
            if worker.closing:
                future.set_running_or_notify_cancel()
                future.set_exception(ServerBusy(SHUTTING_DOWN))
            else:
                worker.queue.append((job, future))
                worker.wakeup.notify()
        return await asyncio.wrap_future(future)

    def _release(self, _future: object) -> None:
        with self._lock:
            self._pending -= 1

    def run(self, job: Job) -> Result:
        """Run one job on this thread; public so benchmarks and tests can call it directly."""
        try:
            with stage("running the job"):
                return self._run(job)
        finally:
            # Pipelines grow and shrink as LoRAs load and unload: keep the budget true.
            self.cache.remeasure()

    def _run(self, job: Job) -> Result:
        if isinstance(job, UpscaleJob):
            upscaler = self.upscaler(job.upscaler)
            with stage("upscaling the image"):
                return ImagesResult((upscale(upscaler, job),))
        if isinstance(job, HiresFixJob):
            loaded = self.pipeline(job.render.model)
            # The re-render uses the original inference's LoRAs too.
            self.loras(loaded, job.render.loras)
            hires_upscaler = self.upscaler(job.upscaler) if job.upscaler else None
            with stage("re-rendering the upscaled image (hires fix)"):
                return ImagesResult((hires_fix(loaded.pipe, loaded.schedulers, hires_upscaler, job),))
        if isinstance(job, VideoJob):
            frames = self.video_frames(job)
            with stage("encoding the video"):
                return VideoResult(encode_mp4(frames, job.fps))
        if not isinstance(job, TextToImageJob):
            raise TypeError(f"unknown job type {type(job).__name__}")
        loaded = self.pipeline(job.model)
        self.loras(loaded, job.loras)
        if isinstance(job, ControlNetJob):
            control_map = self.control_map(job)
            controlnet = self.controlnet(job.controlnet)
            with stage("denoising with the ControlNet"):
                images = controlnet_images(loaded.pipe, loaded.schedulers, job, controlnet, control_map)
            return ImagesResult(tuple(images), control_image=encode_png(control_map))
        with stage("denoising"):
            if isinstance(job, ImageToImageJob):
                return ImagesResult(tuple(image_to_image(loaded.pipe, loaded.schedulers, job)))
            return ImagesResult(tuple(text_to_image(loaded.pipe, loaded.schedulers, job)))

    def pipeline(self, spec: ModelSpec) -> LoadedPipeline:
        def load() -> LoadedPipeline:
            pipe = load_text_to_image(spec, self.device, self.dtype, self._cache_dir)
            return LoadedPipeline(
                pipe, Schedulers(pipe.scheduler.config), LoraState(self._max_loras, self._max_lora_bytes)
            )

        with stage(f"loading model {spec.id} (version {spec.version})"):
            return self.cache.get(spec, load, estimate_bytes(spec.path))

    def loras(self, loaded: LoadedPipeline, loras: tuple[LoraSpec, ...]) -> None:
        names = ", ".join(f"{spec.id} (version {spec.version})" for spec in loras)
        with stage(f"loading LoRA {names}" if loras else "removing LoRAs"):
            activate_loras(loaded.pipe, loaded.loras, loras)

    def upscaler(self, spec: ModelSpec) -> Upscaler:
        # With the ControlNets and annotators: small models that must not evict a checkpoint.
        with stage(f"loading upscaler {spec.id} (version {spec.version})"):
            return self.auxiliaries.get(
                ("upscaler", spec), lambda: load_upscaler(spec, self.device, self.dtype), estimate_bytes(spec.path)
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

    def video_frames(self, job: VideoJob) -> np.ndarray:
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
                return video.run_wan(pipe, job)
        if job.motion_adapter is None:
            raise ValueError("an AnimateDiff job needs a motion adapter")
        base = self.pipeline(job.model)
        # The motion pipeline shares the base text encoder, so no LoRA of an earlier image job may
        # stay active; and it copies the base UNet's weights when built, which needs plain layers.
        self.loras(base, ())
        adapter = job.motion_adapter

        def build() -> AnimateDiffPipeline:
            remove_loras(base.pipe, base.loras)
            return video.animatediff_pipeline(base.pipe, video.load_motion_adapter(adapter, self.dtype))

        with stage(f"loading motion adapter {adapter.id} (version {adapter.version})"):
            # The new part is a copy of the UNet with the motion modules: about the adapter's files
            # plus the UNet's tensors.
            estimate = estimate_bytes(adapter.path) + resident_bytes(base.pipe.unet)
            animated = self.cache.get(AnimatedKey(job.model, adapter), build, estimate)
        with stage("denoising the video"):
            return video.run_animatediff(animated, base.schedulers.config, job)
