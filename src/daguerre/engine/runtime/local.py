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
    ModelSpec,
    Result,
    TextToImageJob,
    UpscaleJob,
    VideoJob,
    VideoResult,
)
from daguerre.engine.loading.checkpoints import load_text_to_image
from daguerre.engine.loading.lora import LoraState, activate_loras, remove_loras
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
from daguerre.engine.runtime.model_cache import ModelCache
from daguerre.errors import GenerationFailed, ServerBusy
from daguerre.imaging import encode_png

log = logging.getLogger(__name__)


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


def _settle(future: Future[Result], result: Result | None = None, error: BaseException | None = None) -> None:
    # A job failed by close() may still end on the worker later; its outcome then goes nowhere.
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
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
                _settle(future, result=run(job))
            except BaseException as exc:
                _settle(future, error=exc)
            finally:
                with self.wakeup:
                    self.running = None


class LocalEngine(EngineClient):
    def __init__(
        self,
        cache_dir: Path,
        device: str = "auto",
        dtype: str = "auto",
        max_loaded_models: int = 2,
        max_queue: int = 32,
        video_cpu_offload: bool = False,
        video_vae_tiling: bool = True,
        max_loaded_auxiliaries: int = 4,
        shutdown_grace_s: float = 30.0,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.cache: ModelCache[ModelSpec | AnimatedKey] = ModelCache(max_loaded_models)
        # ControlNets and annotators, apart so that loading one never evicts a checkpoint.
        self.auxiliaries: ModelCache[tuple[str, ModelSpec | AuxiliarySpec]] = ModelCache(max_loaded_auxiliaries)
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
                _settle(running, error=ServerBusy(STOPPED))

    def status(self) -> EngineStatus:
        return EngineStatus(
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            queued=self._pending,
            loaded_models=tuple(f"{k.id}@{k.version}" for k in self.cache),
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
            if isinstance(job, UpscaleJob):
                return ImagesResult((upscale(self.upscaler(job.upscaler), job),))
            if isinstance(job, HiresFixJob):
                loaded = self.pipeline(job.render.model)
                # The re-render uses the original inference's LoRAs too.
                activate_loras(loaded.pipe, loaded.loras, job.render.loras)
                upscaler = self.upscaler(job.upscaler) if job.upscaler else None
                return ImagesResult((hires_fix(loaded.pipe, loaded.schedulers, upscaler, job),))
            if isinstance(job, VideoJob):
                return VideoResult(encode_mp4(self.video_frames(job), job.fps))
            if not isinstance(job, TextToImageJob):
                raise TypeError(f"unknown job type {type(job).__name__}")
            loaded = self.pipeline(job.model)
            activate_loras(loaded.pipe, loaded.loras, job.loras)
            if isinstance(job, ControlNetJob):
                control_map = self.control_map(job)
                controlnet = self.controlnet(job.controlnet)
                images = controlnet_images(loaded.pipe, loaded.schedulers, job, controlnet, control_map)
                return ImagesResult(tuple(images), control_image=encode_png(control_map))
            if isinstance(job, ImageToImageJob):
                return ImagesResult(tuple(image_to_image(loaded.pipe, loaded.schedulers, job)))
            return ImagesResult(tuple(text_to_image(loaded.pipe, loaded.schedulers, job)))
        except Exception as exc:
            log.exception("job failed")
            raise GenerationFailed(f"generation failed: {exc}") from exc

    def pipeline(self, spec: ModelSpec) -> LoadedPipeline:
        def load() -> LoadedPipeline:
            pipe = load_text_to_image(spec, self.device, self.dtype, self._cache_dir)
            return LoadedPipeline(pipe, Schedulers(pipe.scheduler.config))

        return self.cache.get(spec, load)

    def upscaler(self, spec: ModelSpec) -> Upscaler:
        # With the ControlNets and annotators: small models that must not evict a checkpoint.
        return self.auxiliaries.get(("upscaler", spec), lambda: load_upscaler(spec, self.device, self.dtype))

    def controlnet(self, spec: AuxiliarySpec) -> ControlNetModel:
        def load() -> ControlNetModel:
            model: ControlNetModel = ControlNetModel.from_pretrained(spec.path, dtype=self.dtype, local_files_only=True)
            # typeshed types functools.wraps (ModelMixin.to is wrapped) as an unbound function.
            model.to(self.device)  # type: ignore[arg-type]
            return model

        return self.auxiliaries.get(("controlnet", spec), load)

    def control_map(self, job: ControlNetJob) -> Image.Image:
        image = Image.open(io.BytesIO(job.control_image)).convert("RGB")
        if not job.preprocess:
            return image
        if job.controlnet.kind == "canny":
            return canny(image)
        annotator = job.annotator
        if annotator is None:
            raise ValueError(f"a {job.controlnet.kind} ControlNet job needs an annotator or preprocess=False")
        annotate: Annotator = self.auxiliaries.get(
            ("annotator", annotator), lambda: load_annotator(annotator, self.device)
        )
        return annotate(image)

    def video_frames(self, job: VideoJob) -> np.ndarray:
        if job.architecture == "wan":
            pipe = self.cache.get(
                job.model,
                lambda: video.load_wan(
                    job.model, self.device, self.dtype, self._video_cpu_offload, self._video_vae_tiling
                ),
            )
            return video.run_wan(pipe, job)
        if job.motion_adapter is None:
            raise ValueError("an AnimateDiff job needs a motion adapter")
        base = self.pipeline(job.model)
        # The motion pipeline shares the base text encoder, so no LoRA of an earlier image job may
        # stay active; and it copies the base UNet's weights when built, which needs plain layers.
        activate_loras(base.pipe, base.loras, ())
        adapter = job.motion_adapter

        def build() -> AnimateDiffPipeline:
            remove_loras(base.pipe, base.loras)
            return video.animatediff_pipeline(base.pipe, video.load_motion_adapter(adapter, self.dtype))

        animated = self.cache.get(AnimatedKey(job.model, adapter), build)
        return video.run_animatediff(animated, base.schedulers.config, job)
