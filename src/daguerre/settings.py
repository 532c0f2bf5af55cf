"""Server settings: environment variables (DAGUERRE_*), then an optional TOML file, then defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

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
    max_loras: int = Field(8, ge=1, description="LoRA adapters kept loaded in one pipeline")
    max_lora_bytes: int = Field(1024**3, ge=1, description="bytes of LoRA adapters kept loaded in one pipeline")


class EngineSettings(BaseModel):
    """How the in-process engine runs jobs; see the README ("Batching" in "How it is built")."""

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
    engine: EngineSettings = Field(default_factory=EngineSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log_format: Literal["text", "json"] = Field(
        "text", description="serve's log lines: uvicorn's text, or one JSON object per line (with the job's inf_id)"
    )
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)

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
