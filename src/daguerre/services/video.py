"""Serving POST /api/video: resolve the model, check the request against it, fetch the first
frame for image-to-video and price it (`plan`); services/jobs.py charges, runs and stores the MP4.

Video models are Wan 2.1 pipelines (text- or image-to-video) registered as kind "video", and every
SD 1.5 image checkpoint once an AnimateDiff motion adapter of kind "video" is registered: the
request names the checkpoint and the newest registered adapter of its family animates it. Every refusal happens
before the charge; credits taken are given back if the work fails.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from PIL import Image, ImageOps

from daguerre.engine.jobs import Job, VideoJob
from daguerre.errors import InvalidParameter
from daguerre.imaging import encode_png
from daguerre.protocol.inference import MAX_SEED
from daguerre.protocol.video import MAX_FRAMES, VideoRequest, VideoResponse
from daguerre.services.accounts import TokenInfo, from_milli
from daguerre.services.catalog import Kind, ModelRecord, Version
from daguerre.services.inference import model_spec
from daguerre.services.jobs import Plan
from daguerre.services.pricing import video_cost
from daguerre.services.records import InferenceRecord, params_document
from daguerre.services.remote_images import RemoteImages
from daguerre.services.serving import ServingModule

WAN = "wan"
ANIMATEDIFF = "animatediff"

# Landscape (width, height): the sizes Wan 2.1 was trained at. Portrait swaps them.
NOMINAL_SIZES = {"480p": (832, 480), "720p": (1280, 720)}


@dataclass(frozen=True)
class Defaults:
    steps: int
    scale: float
    num_frames: int


# The models' published settings: Wan 2.1 guidance 5 over 81 frames (16 fps); AnimateDiff 16
# frames (its motion modules were trained on 16) at guidance 7.5.
ARCHITECTURE_DEFAULTS = {WAN: Defaults(30, 5.0, 81), ANIMATEDIFF: Defaults(25, 7.5, 16)}


def _defaults(architecture: str, options: dict[str, Any]) -> Defaults:
    """The architecture's defaults, unless the catalog entry sets its own (the demo's tiny models
    default to short clips so they answer in seconds on a CPU).
    """
    base = ARCHITECTURE_DEFAULTS[architecture]
    return Defaults(
        steps=int(options.get("default_steps", base.steps)),
        scale=base.scale,
        num_frames=int(options.get("default_num_frames", base.num_frames)),
    )


@dataclass(frozen=True)
class VideoModel:
    """What a video model_id resolves to."""

    model: ModelRecord  # the Wan pipeline, or the SD checkpoint AnimateDiff animates
    adapter: ModelRecord | None  # the AnimateDiff motion adapter
    architecture: str
    mode: str  # t2v | i2v
    resolutions: list[str]
    max_frames: int
    defaults: Defaults
    # The frame size each resolution name renders at, when the model's catalog entry gives its own
    # (option "frame_sizes", landscape [width, height]); else NOMINAL_SIZES.
    frame_sizes: dict[str, list[int]]


def frame_size(resolution: str, portrait: bool, sizes: dict[str, list[int]] | None = None) -> tuple[int, int]:
    """The frame size of a resolution name: the model's own (`sizes`) or the nominal Wan size,
    swapped for portrait."""
    width, height = (sizes or {}).get(resolution) or NOMINAL_SIZES[resolution]
    return (height, width) if portrait else (width, height)


def fit_png(image: Image.Image, width: int, height: int) -> bytes:
    """Scale and centre-crop the first frame to the clip's size, as Wan's own examples do."""
    return encode_png(ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS))


class VideoService(ServingModule):
    def __init__(self, *services: Any, images: RemoteImages) -> None:
        super().__init__(*services)
        self.images = images

    def _adapters(self) -> list[ModelRecord]:
        """The motion adapters, newest first."""
        return [m for m in reversed(self.catalog.list(Kind.VIDEO)) if m.options.get("architecture") == ANIMATEDIFF]

    @staticmethod
    def _adapter_for(model: ModelRecord, adapters: list[ModelRecord]) -> ModelRecord | None:
        # An adapter may be tied to the checkpoints it was made for (option "animates", a list of
        # model ids): the demo's tiny adapter only fits the demo's tiny UNet.
        for adapter in adapters:
            if adapter.family == model.family and model.id in adapter.options.get("animates", [model.id]):
                return adapter
        return None

    def listing(self) -> list[tuple[ModelRecord, dict[str, Any]]]:
        """Each model /api/video takes, with what /api/models says of it beyond the common fields."""
        entries = [
            (m, {"type": "video", "architecture": WAN, **{k: m.options[k] for k in ("mode", "resolutions")}})
            for m in self.catalog.list(Kind.VIDEO)
            if m.options.get("architecture") == WAN
        ]
        adapters = self._adapters()
        for model in self.catalog.list(Kind.CHECKPOINT):
            adapter = self._adapter_for(model, adapters)
            if adapter is not None:
                extra = {
                    "type": "video",
                    "mode": "t2v",
                    "architecture": ANIMATEDIFF,
                    "resolutions": adapter.options["resolutions"],
                    "motion_adapter": adapter.id,
                }
                entries.append((model, extra))
        return entries

    def resolve(self, model_id: str) -> VideoModel:
        model = self.catalog.get(model_id)
        if model.kind == Kind.VIDEO and model.options.get("architecture") == WAN:
            return VideoModel(
                model,
                None,
                WAN,
                model.options["mode"],
                model.options["resolutions"],
                MAX_FRAMES,
                _defaults(WAN, model.options),
                model.options.get("frame_sizes", {}),
            )
        if model.kind == Kind.VIDEO:
            raise InvalidParameter(
                "model_id",
                f"invalid model_id {model_id!r}: it is an AnimateDiff motion adapter; pass the id of an image "
                "model to animate (/api/models lists them under video_models)",
            )
        adapter = self._adapter_for(model, self._adapters())
        if model.kind != Kind.CHECKPOINT or adapter is None:
            raise InvalidParameter(
                "model_id",
                f"invalid model_id {model_id!r}: it is not a video model, and no installed AnimateDiff motion "
                f"adapter animates it ({model.family}); /api/models lists video models under video_models",
            )
        return VideoModel(
            model,
            adapter,
            ANIMATEDIFF,
            "t2v",
            adapter.options["resolutions"],
            int(adapter.options["max_frames"]),
            _defaults(ANIMATEDIFF, adapter.options),
            adapter.options.get("frame_sizes", {}),
        )

    def _num_frames(self, video: VideoModel, requested: int | None) -> int:
        frames = requested if requested is not None else video.defaults.num_frames
        if video.architecture == WAN and (frames - 1) % 4:
            raise InvalidParameter.bad_value(
                "num_frames", frames, f"model {video.model.id} (Wan) takes 4k+1 frames: 5, 9, 13, ... up to 81"
            )
        if frames > video.max_frames:
            raise InvalidParameter.bad_value(
                "num_frames", frames, f"must be an integer from 1 to {video.max_frames} for model {video.model.id}"
            )
        return frames

    async def plan(self, token: TokenInfo, request: VideoRequest, own_bases: Iterable[str]) -> Plan:
        video = await to_thread.run_sync(self.resolve, request.model_id)
        version = video.model.version(request.version)
        if request.resolution not in video.resolutions:
            raise InvalidParameter.bad_value(
                "resolution", request.resolution, f"model {video.model.id} supports {', '.join(video.resolutions)}"
            )
        if video.mode == "i2v" and not request.image_url:
            raise InvalidParameter(
                "image_url", f"image_url is required: model {video.model.id} makes video from an image"
            )
        if video.mode == "t2v" and request.image_url:
            raise InvalidParameter(
                "image_url",
                f"invalid image_url: model {video.model.id} is text-to-video and takes no image; "
                "use an image-to-video model from /api/models",
            )
        num_frames = self._num_frames(video, request.num_frames)
        image_png = None
        portrait = False
        if request.image_url:
            image = await self.images.fetch(request.image_url, own_bases)
            portrait = image.height > image.width
            width, height = frame_size(request.resolution, portrait, video.frame_sizes)
            image_png = await to_thread.run_sync(fit_png, image, width, height)
        else:
            width, height = frame_size(request.resolution, portrait, video.frame_sizes)
        size = {"width": width, "height": height, "num_frames": num_frames}
        job = self._job(request, video, version, size, image_png)
        nominal = frame_size(request.resolution, portrait)  # the price follows the resolution asked for
        cost = video_cost(self.settings.pricing, *nominal, job.num_frames, job.steps)
        resolved = {
            "architecture": job.architecture,
            "width": job.width,
            "height": job.height,
            "num_frames": job.num_frames,
            "steps": job.steps,
            "scale": job.guidance_scale,
            "seed": job.seed,
            "motion_adapter": {"id": video.adapter.id, "version": video.adapter.latest.version}
            if video.adapter
            else None,
        }
        params = params_document(request.model_dump(mode="json"), resolved)
        inputs = {"first_frame": image_png} if image_png is not None else {}
        return Plan("video", job, cost, video.model.id, version.version, params, inputs)

    @staticmethod
    def _job(
        request: VideoRequest,
        video: VideoModel,
        version: Version,
        pinned: Mapping[str, Any],
        image_png: bytes | None,
    ) -> VideoJob:
        """The job, from the request and the values `pinned` (the frame size and length for a new
        request; every resolved value for a record queued before a restart)."""
        steps = request.steps if request.steps is not None else video.defaults.steps
        guidance = request.scale if request.scale is not None else video.model.default_scale or video.defaults.scale
        seed = request.seed if request.seed >= 0 else secrets.randbelow(MAX_SEED + 1)
        return VideoJob(
            model=model_spec(video.model, version),
            architecture=video.architecture,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=int(pinned["width"]),
            height=int(pinned["height"]),
            num_frames=int(pinned["num_frames"]),
            fps=request.fps,
            steps=int(pinned.get("steps", steps)),
            guidance_scale=float(pinned.get("scale", guidance)),
            seed=int(pinned.get("seed", seed)),
            motion_adapter=model_spec(video.adapter, video.adapter.latest) if video.adapter else None,
            image=image_png,
        )

    def answer(self, record: InferenceRecord, base_url: str) -> VideoResponse:
        resolved = record.resolved
        return VideoResponse(
            video_url=f"{base_url}/files/{record.outputs[0]}",
            inf_id=record.id,
            credit_cost=from_milli(record.credit_cost),
            width=int(resolved["width"]),
            height=int(resolved["height"]),
            num_frames=int(resolved["num_frames"]),
            fps=int(record.request["fps"]),
            seed=int(resolved["seed"]),
        )

    async def restore(self, record: InferenceRecord, inputs: dict[str, bytes]) -> Job:
        """The clip of a record queued before a restart: its stored first frame, resolved values pinned."""

        def rebuild() -> Job:
            request = VideoRequest.model_validate({**record.request, "access_token": ""})
            video = self.resolve(request.model_id)
            version = video.model.version(record.version)
            return self._job(request, video, version, record.resolved, inputs.get("first_frame"))

        return await to_thread.run_sync(rebuild)
