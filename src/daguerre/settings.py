"""Server settings: environment variables (DAGUERRE_*), then an optional TOML file, then defaults."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_NEGATIVE_PROMPT = (
    "(worst quality, low quality:1.4), lowres, blurry, jpeg artifacts, watermark, signature, text, "
    "bad anatomy, bad hands, extra fingers, missing fingers, deformed, disfigured"
)


class Pricing(BaseModel):
    """Credit formula constants; see the README's "Credits" section for the formula."""

    image_rate: float = Field(0.5, ge=0, description="credits per 512x512 image at 30 steps")
    min_image_cost: float = Field(0.05, ge=0, description="floor per image, whatever its size")
    upscale_rate: float = Field(0.5, ge=0, description="credits per output megapixel (1024x1024) of an upscale")
    min_upscale_cost: float = Field(0.05, ge=0, description="floor per upscale, whatever its size")
    video_rate: float = Field(12.0, ge=0, description="credits per 832x480 clip of 81 frames at 30 steps")
    min_video_cost: float = Field(0.5, ge=0, description="floor per clip, whatever its size")


class Upscaling(BaseModel):
    """ESRGAN tiling and the size limit of /api/upscale; see docs/upscale.md."""

    tile: int = Field(256, ge=16, description="side, in input pixels, of the tiles the upscaler sees one at a time")
    tile_overlap: int = Field(32, ge=0, description="input pixels neighbouring tiles share, blended across the seam")
    max_output_pixels: int = Field(4096 * 4096, ge=1, description="largest width x height an upscale may produce")

    @model_validator(mode="after")
    def _overlap_within_tile(self) -> Upscaling:
        # Beyond half a tile, a tile's two blending ramps would cross.
        if 2 * self.tile_overlap > self.tile:
            raise ValueError(f"tile_overlap ({self.tile_overlap}) must be at most half of tile ({self.tile})")
        return self


class VideoSettings(BaseSettings):
    """/api/video; see docs/video.md ("Settings")."""

    cpu_offload: bool = Field(
        False, description="on CUDA, keep Wan's models in CPU memory and move each to the GPU only while it runs"
    )
    vae_tiling: bool = Field(True, description="decode Wan frames in tiles, so 720p decodes within one GPU")


class RemoteImageSettings(BaseSettings):
    """Fetching image_url from other servers; see docs/video.md ("image_url")."""

    allow_private: bool = Field(
        False, description="allow private, loopback, link-local and reserved addresses (trusted networks only)"
    )
    max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    timeout_s: float = Field(20.0, gt=0, description="for the whole fetch, redirects included")
    max_redirects: int = Field(5, ge=0)
    max_pixels: int = Field(40_000_000, ge=1, description="refuse larger images (decompression bombs)")


class WebhookSettings(BaseModel):
    """Calls to a job's webhook_url; see the README ("Webhooks").

    With the defaults a delivery is tried 6 times: at once, then after about 10, 30, 90, 240 and
    240 s (each wait `backoff_factor` times the last, at most `max_backoff_s`, jittered by 20%),
    so the last attempt comes about 10 minutes after the job ended.
    """

    allow_private_hosts: list[str] = Field(
        default_factory=list,
        description="host names, addresses or networks (CIDR) webhooks may reach even though they are private: "
        "the operator's own receivers",
    )
    timeout_s: float = Field(10.0, gt=0, description="for one attempt: connecting, sending and the answer")
    max_attempts: int = Field(6, ge=1, le=100, description="attempts before a delivery is given up as failed")
    initial_backoff_s: float = Field(10.0, gt=0, description="wait after the first failed attempt")
    backoff_factor: float = Field(3.0, ge=1, description="each further wait is this many times the last")
    max_backoff_s: float = Field(240.0, gt=0, description="longest wait between two attempts")
    max_url_chars: int = Field(2048, ge=16, description="longest webhook_url accepted")


class ModelCacheSettings(BaseModel):
    """What the engine keeps resident, in bytes; see the README ("Memory" in "How it is built").

    The byte budgets default to shares of the device's memory (GPU memory on CUDA, system RAM on
    CPU and MPS), chosen from published fp16 sizes in engine/runtime/local.py: 60% for pipelines
    (an SD 1.5 pipeline is about 2.1 GB), 10% for ControlNets, annotators and upscalers (an SD 1.5
    ControlNet is about 0.72 GB). The LoRA bounds are per resident pipeline: an attention LoRA for
    SD 1.5 holds 273,024 parameters per unit of rank (counted from SD 1.5's layer shapes), so
    about 17 MB at rank 32 and 70 MB at rank 128 in fp16; 8 of those stay well within 1 GiB.
    """

    max_bytes: int | None = Field(
        None, ge=1, description="bytes of resident pipelines; default 60% of the device's memory"
    )
    auxiliary_max_bytes: int | None = Field(
        None, ge=1, description="bytes of resident ControlNets, annotators and upscalers; default 10%"
    )
    host_max_bytes: int | None = Field(
        None,
        ge=0,
        description="bytes of host RAM (pinned on CUDA) holding pipelines evicted from the device, so that swapping "
        "one back is a copy, not a load; default 25% of system RAM on CUDA, 0 (off) on CPU and MPS",
    )
    max_loras: int = Field(8, ge=1, description="LoRA adapters kept loaded in one pipeline")
    max_lora_bytes: int = Field(1024**3, ge=1, description="bytes of LoRA adapters kept loaded in one pipeline")


class ExecutionSettings(BaseModel):
    """How the engine runs a loaded SD pipeline; see engine/runtime/execution.py and the README
    ("Throughput"). Each changes speed and memory, not images (beyond floating-point rounding).
    The defaults keep the measured-safe path; compile and fuse_qkv stay off until a GPU
    measurement says they pay (the README's GPU table)."""

    channels_last: bool | None = Field(
        None, description="UNet and VAE in channels-last memory format; default on CUDA only (no gain on a CPU)"
    )
    attention: Literal["sdpa", "classic"] = Field(
        "sdpa", description="sdpa: PyTorch's fused attention (FlashAttention where the GPU allows); classic: matmuls"
    )
    fuse_qkv: bool = Field(False, description="fuse each attention's q, k, v projections into one (needs sdpa)")
    compile: bool = Field(False, description="torch.compile the UNet and VAE, per resolution and batch at first use")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode; reduce-overhead and max-autotune add CUDA graphs"
    )
    compile_max_shapes: int = Field(
        16, ge=1, description="compiled shapes kept per module; later new shapes run uncompiled"
    )
    compile_cache_dir: Path | None = Field(
        None,
        description="inductor's cache of generated kernels, kept across restarts; default <data_dir>/cache/inductor",
    )

    @model_validator(mode="after")
    def _fusion_needs_sdpa(self) -> ExecutionSettings:
        if self.fuse_qkv and self.attention != "sdpa":
            raise ValueError("execution.fuse_qkv needs execution.attention = 'sdpa'")
        return self


class WorkerSettings(BaseModel):
    """How the in-process engine's worker runs jobs (on a fleet, each replica's); see the README
    ("Batching" in "How it is built")."""

    max_batch_size: int = Field(
        8,
        ge=1,
        description="images in one forward pass: waiting jobs that can share it run together; 1 turns batching off",
    )
    batch_window_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="how long a batch that is not full waits for more jobs; 0 takes only those already waiting",
    )
    cpu_threads: int = Field(
        2,
        ge=0,
        le=64,
        description="threads that encode finished images and prepare waiting jobs while the device denoises; "
        "0 does that work on the engine's worker, between batches",
    )


class MetricsSettings(BaseModel):
    """GET /metrics (Prometheus) and the request counting behind it; see the README ("Metrics and logs")."""

    enabled: bool = Field(True, description="serve GET /metrics and count HTTP requests")
    token: SecretStr | None = Field(
        None, description="when set, /metrics requires 'Authorization: Bearer <token>'; usually scraped privately"
    )


class RaySettings(BaseModel):
    """The engine on a Ray Serve cluster (`engine = "ray"`); see the README ("Run a fleet") and
    docs/fleet.md for what to set.

    The gateway deploys the workers when the cluster has no application `app_name` yet, with
    these values and the engine settings of its own (device, dtype, model_cache, video); a
    gateway that finds it running attaches to it as it is.
    """

    address: str = Field("auto", description="the Ray cluster: host:port of its head (GCS), or auto")
    namespace: str = Field("daguerre", description="the Ray namespace the gateway's driver joins")
    app_name: str = Field("daguerre", description="the Ray Serve application of the workers")
    num_gpus: float = Field(1.0, ge=0, description="GPUs per replica (fractions share a GPU)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica")
    max_models_per_replica: int = Field(
        3, ge=1, description="checkpoints a replica keeps loaded, least recently used evicted first"
    )
    min_replicas: int = Field(1, ge=0, description="autoscaling floor; equal to max_replicas for a fixed count")
    max_replicas: int = Field(1, ge=1, description="autoscaling ceiling")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="autoscaling target: jobs running or queued per replica"
    )
    max_ongoing_requests: int = Field(
        8, ge=1, description="jobs one replica accepts at once (running or in its queue); the rest wait in the router"
    )
    router: Literal["affinity", "serve", "round_robin"] = Field(
        "affinity",
        description="affinity: a job goes only to replicas holding its model while they have room (see "
        "affinity_wait_s); serve: Ray Serve's multiplexed routing (a preference); round_robin: ignore models",
    )
    affinity_wait_s: float = Field(
        10.0,
        ge=0,
        description="how long a job waits for room at the replicas holding its model before another replica "
        "may load it",
    )
    retries_on_replica_loss: int = Field(
        1, ge=0, description="times a job runs again when the replica running it dies (the same seeds, same result)"
    )

    @model_validator(mode="after")
    def _replica_bounds(self) -> RaySettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be at most max_replicas ({self.max_replicas})")
        return self


class GatewaySettings(BaseModel):
    """Several gateways on one database (README "Several gateways, Postgres and S3"): each job is
    claimed by one gateway, whose heartbeat renews the claim; another takes the jobs of a gateway
    that stopped renewing once `lease_s` has passed."""

    id: str | None = Field(None, description="this gateway's name in job claims; default host:port (stable on restart)")
    lease_s: float = Field(30.0, ge=1, description="seconds a claim lasts unless renewed")
    heartbeat_s: float = Field(5.0, gt=0, description="seconds between renewals and looks for abandoned jobs")

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> GatewaySettings:
        # Two renewals per lease at least, so one slow heartbeat never loses a live gateway's jobs.
        if 2 * self.heartbeat_s > self.lease_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s}) must be at most half of lease_s ({self.lease_s})")
        return self


class S3Settings(BaseModel):
    """Where s3:// URLs (storage_url, model files) go; unset values fall back to the AWS defaults
    (AWS_* environment variables, ~/.aws, an instance role)."""

    endpoint_url: str | None = Field(None, description="e.g. http://minio:9000 for a server other than AWS")
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    region: str | None = Field(None, description="default us-east-1 when endpoint_url is set")


class ModelFilesSettings(BaseModel):
    """The node's local copies of model files registered by URL (s3://...)."""

    cache_dir: Path | None = Field(None, description="default <data_dir>/model-files")
    max_bytes: int = Field(200 * 1024**3, ge=1, description="bytes of copies kept; least recently used removed")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DAGUERRE_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path("~/.daguerre").expanduser())
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in the data dir")
    storage_url: str | None = Field(None, description="fsspec URL for outputs; default: <data_dir>/outputs")
    public_url: str | None = Field(None, description="base of the URLs handed out; default: from the request")

    host: str = "127.0.0.1"
    port: int = 8000
    cors_origins: list[str] = ["*"]
    http_error_status: bool = Field(
        False, description="answer errors with 4xx/5xx; the hosted API, and its clients, use 200"
    )

    engine: Literal["local", "ray"] = Field(
        "local", description="local: the engine in this process; ray: GPU workers on a Ray Serve cluster (`ray`)"
    )
    ray: RaySettings = Field(default_factory=RaySettings)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_loaded_models: int | None = Field(
        None, ge=1, description="optional cap on the number of resident pipelines, besides model_cache.max_bytes"
    )
    max_queue: int = Field(32, ge=1, description="jobs waiting or running before 'server busy'")
    # Jobs (README "Async jobs, progress and cancel").
    max_queued_per_token: int = Field(
        10, ge=1, description="jobs one token may have queued or running; more are refused before any charge"
    )
    keep_running_on_disconnect: bool = Field(
        False,
        description="a synchronous request whose client disconnects keeps its job running (and charged); "
        "by default the job is cancelled and refunded",
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="on SIGTERM, seconds the running job gets to finish before it is failed and refunded"
    )
    max_num_images: int = Field(4, ge=1, le=16)
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="init_image_file size limit")
    max_upload_pixels: int = Field(40_000_000, ge=1, description="decompression-bomb guard for init_image_file")
    upload_background: str = Field("white", description="colour transparent uploads are flattened onto")

    # Request limits (README "Errors" and "Reliability"): every body is read no further than these.
    max_prompt_chars: int = Field(8000, ge=1, description="longest prompt and negative_prompt, in characters")
    max_prompt_chunks: int = Field(
        40, ge=1, description="longest prompt and negative_prompt, in chunks of 75 CLIP tokens (3,000 tokens)"
    )
    max_form_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="largest JSON or url-encoded body or multipart field, and the most of a body read before "
        "its access_token is known",
    )
    max_form_fields: int = Field(64, ge=1, description="most fields of a multipart body")

    @property
    def max_body_bytes(self) -> int:
        """Largest body: an upload and the form fields around it."""
        return self.max_upload_bytes + self.max_form_bytes

    default_negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    pricing: Pricing = Field(default_factory=Pricing)
    upscale: Upscaling = Field(default_factory=Upscaling)
    video: VideoSettings = Field(default_factory=VideoSettings)
    remote_images: RemoteImageSettings = Field(default_factory=RemoteImageSettings)
    model_cache: ModelCacheSettings = Field(default_factory=ModelCacheSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    log_format: Literal["text", "json"] = Field(
        "text", description="serve's log lines: uvicorn's text, or one JSON object per line (with the job's inf_id)"
    )
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    model_files: ModelFilesSettings = Field(default_factory=ModelFilesSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("DAGUERRE_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'daguerre.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.data_dir / "outputs")

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def gateway_id(self) -> str:
        return self.gateway.id or f"{socket.gethostname()}:{self.port}"

    @property
    def model_files_dir(self) -> Path:
        return self.model_files.cache_dir or self.data_dir / "model-files"

    def fsspec_options(self, url: str) -> dict[str, Any]:
        """What fsspec needs besides `url` to reach it: the s3 settings for s3:// URLs."""
        if not url.startswith(("s3://", "s3a://")):
            return {}
        options: dict[str, Any] = {}
        if self.s3.access_key_id is not None:
            options["key"] = self.s3.access_key_id
        if self.s3.secret_access_key is not None:
            options["secret"] = self.s3.secret_access_key.get_secret_value()
        client: dict[str, str] = {}
        if self.s3.endpoint_url is not None:
            client = {"endpoint_url": self.s3.endpoint_url, "region_name": self.s3.region or "us-east-1"}
        elif self.s3.region is not None:
            client = {"region_name": self.s3.region}
        if client:
            options["client_kwargs"] = client
        return options
