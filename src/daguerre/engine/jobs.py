"""What crosses the engine boundary: plain, picklable data and no torch, so the same jobs can go
to an in-process engine today and to remote GPU workers (Ray Serve) later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class VaeSpec:
    """A VAE that replaces a checkpoint's own: a diffusers AutoencoderKL folder, or an A1111
    single file read with the checkpoint family's VAE config."""

    id: str
    version: str
    path: str
    format: str  # diffusers | single_file
    sha256: str | None = None  # of a file registered by URL, as ModelSpec's


@dataclass(frozen=True)
class ModelSpec:
    """Where a model version lives and how to load it; the engine's cache key."""

    id: str
    version: str
    path: str
    format: str  # diffusers | single_file
    family: str
    config_path: str | None = None
    # Of a file registered by URL (s3://...): the node's copy is checked against it (loading/model_files.py).
    sha256: str | None = None
    vae: VaeSpec | None = None  # part of the cache key: another VAE is another pipeline


# The scheduler name of LCM sampling (lcm=true); not one a request can name.
LCM_SCHEDULER = "LCM"


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file (kohya or diffusers layout) and the weight to apply it with."""

    id: str
    version: str
    path: str
    weight: float
    sha256: str | None = None  # of a file registered by URL, as ModelSpec's


@dataclass(frozen=True)
class EmbeddingSpec:
    """A textual-inversion embedding (A1111 .pt or .safetensors); its token is the id a prompt writes."""

    id: str
    version: str
    path: str
    sha256: str | None = None  # of a file registered by URL, as ModelSpec's


@dataclass(frozen=True)
class AuxiliarySpec:
    """A ControlNet or annotator model on disk; `kind` is canny, depth or openpose."""

    id: str
    version: str
    path: str
    kind: str


@dataclass(frozen=True)
class TextToImageJob:
    model: ModelSpec
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str  # a contract scheduler name, or "LCM" for LCM sampling
    seeds: tuple[int, ...]
    loras: tuple[LoraSpec, ...] = ()
    karras: bool = False  # Karras sigmas for the scheduler (schedulers.py)
    # The embeddings the prompts name, loaded before they are encoded; the prompts carry each as
    # its tokens (services/embeddings.py).
    embeddings: tuple[EmbeddingSpec, ...] = ()
    clip_skip: int = 1  # A1111's: 2 reads the text encoder's penultimate layer


@dataclass(frozen=True, kw_only=True)
class ImageToImageJob(TextToImageJob):
    init_image: bytes  # PNG, already width x height
    strength: float


@dataclass(frozen=True, kw_only=True)
class ControlNetJob(TextToImageJob):
    control_image: bytes  # PNG, already width x height: a photo to annotate, or a ready-made map
    controlnet: AuxiliarySpec
    annotator: AuxiliarySpec | None  # None for canny (no weights) or when preprocess is off
    preprocess: bool = True


@dataclass(frozen=True)
class Tiling:
    tile: int  # side of a tile, in input pixels
    overlap: int  # input pixels neighbouring tiles share


@dataclass(frozen=True)
class UpscaleJob:
    upscaler: ModelSpec
    image: bytes  # the source image, encoded (PNG)
    width: int  # exact output size
    height: int
    tiling: Tiling


@dataclass(frozen=True)
class HiresFixJob:
    # The original render, at the output size and with the source image's own seed; whatever the
    # text-to-image job carries (LoRA included, once it does) travels with it.
    render: TextToImageJob
    image: bytes  # the source image, encoded (PNG)
    strength: float
    upscaler: ModelSpec | None  # None: Lanczos
    tiling: Tiling

    @property
    def denoising_steps(self) -> int:
        # diffusers' image-to-image runs this many of the `steps`.
        return min(int(self.render.steps * self.strength), self.render.steps)


@dataclass(frozen=True)
class VideoJob:
    """Text-to-video (Wan, or AnimateDiff on an SD 1.5 checkpoint) or image-to-video (Wan)."""

    model: ModelSpec  # the Wan pipeline, or the SD 1.5 checkpoint AnimateDiff animates
    architecture: str  # wan | animatediff
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    fps: int
    steps: int
    guidance_scale: float
    seed: int
    motion_adapter: ModelSpec | None = None  # AnimateDiff only
    image: bytes | None = None  # image-to-video: the first frame, PNG-encoded at width x height


Job = TextToImageJob | UpscaleJob | HiresFixJob | VideoJob


@dataclass(frozen=True)
class ImagesResult:
    images: tuple[bytes, ...]  # PNG-encoded, in the order of the job's seeds
    extension: str = ".png"
    control_image: bytes | None = None  # PNG: the control map a ControlNet job used


@dataclass(frozen=True)
class VideoResult:
    video: bytes  # H.264 MP4, yuv420p
    extension: str = ".mp4"


Result = ImagesResult | VideoResult


@dataclass(frozen=True)
class ResidentModel:
    name: str  # id@version; an auxiliary model's kind first ("controlnet canny@1")
    bytes: int  # its tensors, measured once loaded


@dataclass(frozen=True)
class EngineStatus:
    device: str
    dtype: str
    queued: int  # jobs running or waiting
    loaded_models: tuple[str, ...]
    # The model cache (pipelines) and the auxiliary one (ControlNets, annotators, upscalers):
    # what is resident, least recently used first, and the byte budgets. Shared tensors count once
    # in used_bytes.
    resident: tuple[ResidentModel, ...] = ()
    budget_bytes: int = 0
    used_bytes: int = 0
    auxiliary_resident: tuple[ResidentModel, ...] = ()
    auxiliary_budget_bytes: int = 0
    auxiliary_used_bytes: int = 0
    waiting: int = 0  # of `queued`, jobs waiting for the worker
    # The model cache's host-memory tier: what the device tier evicted, kept a copy away.
    host_resident: tuple[ResidentModel, ...] = ()
    host_budget_bytes: int = 0
    host_used_bytes: int = 0
    device_peak_bytes: int | None = None  # most device memory the engine's tensors held at once (CUDA)
    replicas: tuple[ReplicaStatus, ...] = ()  # a Ray Serve engine's workers (engine/ray)


@dataclass(frozen=True)
class ReplicaStatus:
    """One worker of the Ray Serve engine, as it last reported to this gateway (engine/ray)."""

    replica: str  # Serve's replica id
    actor_name: str  # its actor, in Ray's "serve" namespace
    device: str
    dtype: str
    queued: int  # jobs running or waiting there
    model_loads: int  # checkpoints it has loaded since it started
    loaded_models: tuple[str, ...]  # id@version, least recently used first
    reported_at: float  # the replica's clock (time.time()) when it reported


# What a job tells its submitter, in order: Queued (on admission, then whenever its place
# changes), Started, Progress (per denoising step or upscaled tile), then exactly one final event:
# Finished, Failed or Cancelled. Plain data, so a remote replica can stream them.


@dataclass(frozen=True)
class Queued:
    position: int  # jobs that start before this one, the running one included (0: next)


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class Progress:
    step: int  # steps or tiles done, of `total`, in the current stage
    total: int


@dataclass(frozen=True)
class Finished:
    result: Result


@dataclass(frozen=True)
class Failed:
    message: str  # what a client may read: the stage that failed, never exception text
    error_id: str | None = None  # also in the server log line with the traceback
    status: int = 500  # the HTTP status of the error (503 when the server is shutting down)


@dataclass(frozen=True)
class Cancelled:
    reason: str


# The engines' own reasons and status (the in-process one and the Ray Serve client say the same).
CANCELLED = "cancelled"
SHUTTING_DOWN = "the server is shutting down and this request did not start; its credits were refunded"
STOPPED = (
    "the server is shutting down and this job did not finish within the grace period "
    "(setting shutdown_grace_s); its credits were refunded"
)
BUSY = 503  # the HTTP status of a job failed by the shutdown


# Called by the worker after each denoising step or upscaled tile: (steps done, steps in the stage).
ReportProgress = Callable[[int, int], None]

JobEvent = Queued | Started | Progress | Finished | Failed | Cancelled
FinalEvent = Finished | Failed | Cancelled
FINAL_EVENTS = (Finished, Failed, Cancelled)
