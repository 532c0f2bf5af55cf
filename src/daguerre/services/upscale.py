"""Serving POST /api/upscale: ESRGAN upscales and hires fixes of a token's own images.

The source inference is read back from the database (so this works after a restart, and only for
the token that made it), the image from storage; the engine gets both as plain data. `plan`
prices the request; services/jobs.py charges, runs and stores, as for every job.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from anyio import to_thread
from PIL import Image
from pydantic import ValidationError

from daguerre.engine import families
from daguerre.engine.jobs import HiresFixJob, Job, TextToImageJob, Tiling, UpscaleJob
from daguerre.errors import DaguerreError, InvalidParameter
from daguerre.protocol.inference import InferenceRequest
from daguerre.protocol.upscale import HIRES_FIX_SCALE, UpscaleRequest, UpscaleResponse
from daguerre.services.accounts import TokenInfo, from_milli
from daguerre.services.catalog import CatalogService, Kind, ModelRecord
from daguerre.services.inference import model_spec, render_job
from daguerre.services.jobs import Plan
from daguerre.services.pricing import hires_fix_cost, upscale_cost
from daguerre.services.records import InferenceRecord, params_document
from daguerre.services.serving import ServingModule
from daguerre.settings import Settings


def pick_upscaler(upscalers: list[ModelRecord], scale: float) -> ModelRecord | None:
    """The upscaler with the smallest native factor that reaches `scale`; when none does, the
    largest (the engine runs it repeatedly). Among equal factors, the latest registered wins."""
    newest_first = upscalers[::-1]  # min and max keep the first of equals
    reaching = [u for u in newest_first if u.options["scale"] >= scale]
    if reaching:
        return min(reaching, key=lambda u: u.options["scale"])
    return max(newest_first, key=lambda u: u.options["scale"], default=None)


def output_key(source: InferenceRecord, url: str) -> str:
    """The storage key of `url` if it is one of the inference's outputs (served at /files/<key>)."""
    _, _, key = urlsplit(url).path.partition("/files/")
    if key not in source.outputs:
        raise InvalidParameter.bad_value("url", url, f"must be the URL of an image of inference {source.id}")
    return key


def stored_render(
    catalog: CatalogService, settings: Settings, source: InferenceRecord, seed: int, width: int, height: int
) -> TextToImageJob:
    """The text-to-image job of an image inference, rebuilt from its record the way a fresh
    request is resolved (so fields the engine's jobs gained since get their values as fresh
    requests do), with the record's resolved values kept and one image's seed at a new size."""
    model = catalog.get(source.model_id, Kind.CHECKPOINT)
    version = model.version(source.version)
    try:
        request = InferenceRequest.model_validate({**source.request, "access_token": ""})
    except ValidationError as exc:
        raise DaguerreError(
            f"inference {source.id} cannot be re-rendered: its request is not valid on this server: {exc}"
        ) from None
    pinned = {**source.resolved, "seeds": [seed], "width": width, "height": height}
    job, _ = render_job(catalog, settings, request, model, version, pinned)
    return job


@dataclass(frozen=True)
class _Plan:
    job: UpscaleJob | HiresFixJob
    cost: int
    model_id: str
    version: str
    width: int
    height: int
    resolved: dict[str, Any]


class UpscaleService(ServingModule):
    @property
    def tiling(self) -> Tiling:
        return Tiling(self.settings.upscale.tile, self.settings.upscale.tile_overlap)

    async def plan(self, token: TokenInfo, request: UpscaleRequest) -> Plan:
        source = await to_thread.run_sync(self.inferences.get, request.inf_id, token.id)
        planned = await to_thread.run_sync(self._planned, request, source)
        params = params_document(request.model_dump(mode="json"), planned.resolved)
        return Plan("upscale", planned.job, planned.cost, planned.model_id, planned.version, params)

    def _planned(self, request: UpscaleRequest, source: InferenceRecord) -> _Plan:
        key = output_key(source, request.url)
        image = self.storage.get(key)
        plan_for = self._plan_hires_fix if request.type == "hires_fix" else self._plan_esrgan
        return plan_for(request, source, key, image)

    def answer(self, record: InferenceRecord, base_url: str) -> UpscaleResponse:
        resolved = record.resolved
        return UpscaleResponse(
            output=f"{base_url}/files/{record.outputs[0]}",
            credit_cost=from_milli(record.credit_cost),
            inf_id=record.id,
            width=int(resolved["width"]),
            height=int(resolved["height"]),
        )

    async def restore(self, record: InferenceRecord, inputs: dict[str, bytes]) -> Job:
        """Planned again from the stored request: the source image is in storage already."""

        def rebuild() -> Job:
            request = UpscaleRequest.model_validate({**record.request, "access_token": ""})
            source = self.inferences.get(request.inf_id, record.token_id)
            return self._planned(request, source).job

        return await to_thread.run_sync(rebuild)

    def _plan_esrgan(self, request: UpscaleRequest, source: InferenceRecord, key: str, image: bytes) -> _Plan:
        width, height = _size(image)
        out_w, out_h = round(width * request.scale), round(height * request.scale)
        self._check_size("scale", request.scale, out_w, out_h)
        upscaler = pick_upscaler(self.catalog.list(Kind.UPSCALER), request.scale)
        if upscaler is None:
            raise DaguerreError(
                "no ESRGAN upscaler is installed on this server; the operator adds one with "
                "`daguerre models add FILE --kind upscaler --title TITLE`"
            )
        version = upscaler.latest
        return _Plan(
            job=UpscaleJob(model_spec(upscaler, version), image, out_w, out_h, self.tiling),
            cost=upscale_cost(self.settings.pricing, out_w, out_h),
            model_id=upscaler.id,
            version=version.version,
            width=out_w,
            height=out_h,
            resolved={"source": key, "width": out_w, "height": out_h},
        )

    def _plan_hires_fix(self, request: UpscaleRequest, source: InferenceRecord, key: str, image: bytes) -> _Plan:
        if source.kind != "image":
            raise InvalidParameter.bad_value(
                "inf_id", source.id, "hires_fix re-renders an image from /api/inference, and this is an upscale"
            )
        width, height = _size(image)
        out_w, out_h = width * HIRES_FIX_SCALE, height * HIRES_FIX_SCALE
        self._check_size("type", request.type, out_w, out_h)
        seeds = source.resolved.get("seeds")
        if not seeds:
            raise DaguerreError(f"inference {source.id} cannot be re-rendered: its record does not say how it was made")
        seed = int(seeds[source.outputs.index(key)])
        render = stored_render(self.catalog, self.settings, source, seed, out_w, out_h)
        upscaler = pick_upscaler(self.catalog.list(Kind.UPSCALER), HIRES_FIX_SCALE)
        job = HiresFixJob(
            render=render,
            image=image,
            strength=request.strength,
            upscaler=model_spec(upscaler, upscaler.latest) if upscaler else None,
            tiling=self.tiling,
        )
        reference = families.traits(render.model.family).reference_pixels
        resolved = {
            "source": key,
            "seed": seed,
            "upscaler": {"id": upscaler.id, "version": upscaler.latest.version} if upscaler else None,
            "width": out_w,
            "height": out_h,
        }
        return _Plan(
            job=job,
            cost=hires_fix_cost(self.settings.pricing, out_w, out_h, job.denoising_steps, reference),
            model_id=source.model_id,
            version=render.model.version,
            width=out_w,
            height=out_h,
            resolved=resolved,
        )

    def _check_size(self, field: str, value: object, width: int, height: int) -> None:
        limit = self.settings.upscale.max_output_pixels
        if width * height > limit:
            raise InvalidParameter.bad_value(
                field,
                value,
                f"the output would be {width}x{height} ({width * height} pixels), "
                f"over this server's limit of {limit} pixels (setting upscale.max_output_pixels)",
            )


def _size(image: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(image)) as opened:  # reads the header only
        return opened.size
