"""Serving POST /api/upscale: ESRGAN upscales and hires fixes of a token's own images.

The source inference is read back from the database (so this works after a restart, and only for
the token that made it), the image from storage; the engine gets both as plain data. As with
/api/inference, credits are taken before the work and given back if it fails.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from anyio import to_thread
from PIL import Image

from daguerre.engine.jobs import (
    HiresFixJob,
    LoraSpec,
    ModelSpec,
    TextToImageJob,
    Tiling,
    UpscaleJob,
)
from daguerre.errors import DaguerreError, InvalidParameter
from daguerre.protocol.upscale import HIRES_FIX_SCALE, UpscaleRequest, UpscaleResponse
from daguerre.services.accounts import TokenInfo, from_milli
from daguerre.services.catalog import Kind, ModelRecord
from daguerre.services.inference import model_spec
from daguerre.services.pricing import hires_fix_cost, upscale_cost
from daguerre.services.records import InferenceRecord
from daguerre.services.serving import ServingModule


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


def stored_render(params: dict[str, Any], model: ModelSpec) -> TextToImageJob:
    """The text-to-image job an inference record was made from: its params are that job's fields
    (keys the job has since lost are left out)."""
    known = {f.name for f in fields(TextToImageJob)} - {"model"}
    values = {k: v for k, v in params.items() if k in known}
    values["seeds"] = tuple(values["seeds"])
    values["loras"] = tuple(LoraSpec(**lora) for lora in values.get("loras", ()))
    return TextToImageJob(model=model, **values)


@dataclass(frozen=True)
class _Plan:
    job: UpscaleJob | HiresFixJob
    cost: int
    model_id: str
    version: str
    params: dict[str, Any]


class UpscaleService(ServingModule):
    @property
    def tiling(self) -> Tiling:
        return Tiling(self.settings.upscale.tile, self.settings.upscale.tile_overlap)

    async def upscale(self, token: TokenInfo, request: UpscaleRequest, base_url: str) -> UpscaleResponse:
        source = await to_thread.run_sync(self.inferences.get, request.inf_id, token.id)
        key = output_key(source, request.url)
        image = await to_thread.run_sync(self.storage.get, key)
        plan_for = self._plan_hires_fix if request.type == "hires_fix" else self._plan_esrgan
        plan = await to_thread.run_sync(plan_for, request, source, key, image)
        paid = self.lifecycle.charged(token.id, plan.cost, "upscale", plan.model_id, plan.version, plan.params)
        async with paid as up_id:
            result = await self.engine.submit(plan.job)
            out_key = self.storage.new_key("images", result.extension)
            await self.lifecycle.deliver(up_id, {out_key: result.images[0]}, [out_key])
        return UpscaleResponse(
            output=f"{base_url}/files/{out_key}",
            credit_cost=from_milli(plan.cost),
            inf_id=up_id,
            width=plan.params["width"],
            height=plan.params["height"],
        )

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
        params = {"type": "esrgan", "source_inf_id": source.id, "source": key, "scale": request.scale}
        return _Plan(
            job=UpscaleJob(model_spec(upscaler, version), image, out_w, out_h, self.tiling),
            cost=upscale_cost(self.settings.pricing, out_w, out_h),
            model_id=upscaler.id,
            version=version.version,
            params={**params, "width": out_w, "height": out_h},
        )

    def _plan_hires_fix(self, request: UpscaleRequest, source: InferenceRecord, key: str, image: bytes) -> _Plan:
        if source.kind != "image":
            raise InvalidParameter.bad_value(
                "inf_id", source.id, "hires_fix re-renders an image from /api/inference, and this is an upscale"
            )
        width, height = _size(image)
        out_w, out_h = width * HIRES_FIX_SCALE, height * HIRES_FIX_SCALE
        self._check_size("type", request.type, out_w, out_h)
        model = self.catalog.get(source.model_id, Kind.CHECKPOINT)
        version = model.version(source.version)
        original = stored_render(source.params, model_spec(model, version))
        seed = original.seeds[source.outputs.index(key)]
        upscaler = pick_upscaler(self.catalog.list(Kind.UPSCALER), HIRES_FIX_SCALE)
        job = HiresFixJob(
            render=replace(original, width=out_w, height=out_h, seeds=(seed,)),
            image=image,
            strength=request.strength,
            upscaler=model_spec(upscaler, upscaler.latest) if upscaler else None,
            tiling=self.tiling,
        )
        params = {
            "type": "hires_fix",
            "source_inf_id": source.id,
            "source": key,
            "strength": request.strength,
            "seed": seed,
            "upscaler": upscaler.id if upscaler else None,
        }
        return _Plan(
            job=job,
            cost=hires_fix_cost(self.settings.pricing, out_w, out_h, job.denoising_steps),
            model_id=model.id,
            version=version.version,
            params={**params, "width": out_w, "height": out_h},
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
