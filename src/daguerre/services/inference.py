"""Serving POST /api/inference: resolve the model and defaults and price the request (`plan`),
and answer from the finished record (`answer`); services/jobs.py charges, runs and stores.

The record keeps the request and what it resolved to (services/records.py); `render_job` turns
both back into work, for fresh requests, jobs queued before a restart and hires fixes of old
records alike.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from anyio import to_thread

from daguerre.engine import families
from daguerre.engine.jobs import (
    LCM_SCHEDULER,
    ControlNetJob,
    ImageToImageJob,
    Job,
    LoraSpec,
    ModelSpec,
    TextToImageJob,
    VaeSpec,
)
from daguerre.errors import DaguerreError, InvalidParameter, NotFound
from daguerre.protocol.inference import (
    DEFAULT_SCALE,
    DEFAULT_SCHEDULER,
    KARRAS_SCHEDULERS,
    MAX_SEED,
    InferenceRequest,
    InferenceResponse,
)
from daguerre.services import model_extras
from daguerre.services.accounts import TokenInfo, from_milli
from daguerre.services.catalog import CatalogService, Kind, ModelRecord, Version
from daguerre.services.embeddings import apply_embeddings
from daguerre.services.jobs import Plan
from daguerre.services.pricing import image_cost
from daguerre.services.records import InferenceRecord, params_document
from daguerre.services.serving import ServingModule
from daguerre.services.uploads import prepare_image
from daguerre.settings import Settings

# The contract's default size, for families that keep it (SD 1.5).
CONTRACT_SIZE = (
    InferenceRequest.model_fields["width"].get_default(),
    InferenceRequest.model_fields["height"].get_default(),
)
# lcm=true: steps and guidance suited to an LCM-LoRA, used when the request gives none (the
# model's default scale is for ordinary sampling, so it does not apply).
LCM_STEPS = 6
LCM_SCALE = 1.5


def model_spec(model: ModelRecord, version: Version) -> ModelSpec:
    return ModelSpec(
        id=model.id,
        version=version.version,
        path=version.path,
        format=version.format.value,
        family=model.family,
        config_path=version.config_path,
        sha256=version.sha256,
    )


def checkpoint_spec(catalog: CatalogService, model: ModelRecord, version: Version) -> ModelSpec:
    """An image model's spec, with the VAE it uses instead of its own (`models add --vae`)."""
    spec = model_spec(model, version)
    vae_id = model.options.get("vae")
    if not vae_id:
        return spec
    try:
        vae = catalog.get(vae_id, Kind.VAE)
    except NotFound:
        raise DaguerreError(f"model {model.id} uses VAE {vae_id}, which is no longer installed") from None
    latest = vae.latest
    return replace(spec, vae=VaeSpec(vae.id, latest.version, latest.path, latest.format.value, latest.sha256))


def join_negative(negative_prompt: str, default: str) -> str:
    return ", ".join(p for p in (negative_prompt.strip(), default.strip()) if p)


def _pinned_loras(catalog: CatalogService, entries: list[dict[str, Any]]) -> tuple[LoraSpec, ...]:
    """The LoRAs a record names, at the versions it used, from the catalog as it is now."""
    specs = []
    for entry in entries:
        try:
            version = catalog.get(entry["id"], Kind.LORA).version(entry["version"])
        except NotFound:
            raise DaguerreError(
                f"LoRA {entry['id']} version {entry['version']}, which that inference used, is no longer installed"
            ) from None
        specs.append(LoraSpec(entry["id"], entry["version"], version.path, float(entry["weight"]), version.sha256))
    return tuple(specs)


def model_sizes(model: ModelRecord) -> dict[str, Any]:
    """The sizes an image model renders: its family's range, and the size it renders when a request
    names none (the model's `default_size` option, set with `models add --default-size`, else its
    family's: SDXL 1024x1024, else the contract's 512x768). /api/models lists them as `sizes`."""
    family = families.traits(model.family)
    option = model.options.get("default_size")
    default = list(option) if option else list(family.default_size or CONTRACT_SIZE)
    return {"min": family.min_size, "max": family.max_size, "multiple_of": family.size_multiple, "default": default}


def requested_size(request: InferenceRequest, model: ModelRecord) -> tuple[int, int]:
    """The size a request renders: its own, or the model's default where it names none; each
    side checked against the model's family."""
    sizes = model_sizes(model)
    width = request.width if "width" in request.model_fields_set else int(sizes["default"][0])
    height = request.height if "height" in request.model_fields_set else int(sizes["default"][1])
    for name, value in (("width", width), ("height", height)):
        if not sizes["min"] <= value <= sizes["max"] or value % sizes["multiple_of"]:
            raise InvalidParameter.bad_value(
                name,
                value,
                f"must be a multiple of {sizes['multiple_of']} from {sizes['min']} to {sizes['max']} "
                f"for model {model.id} ({families.traits(model.family).title})",
            )
    return width, height


def _karras(request: InferenceRequest, model: ModelRecord, scheduler: str) -> bool:
    """Karras sigmas: the request's choice, else the model's (`models add --karras`), for the
    schedulers that have them; a request asking them of another scheduler is refused, a model's
    setting simply does not apply there (as A1111's Karras samplers are a subset)."""
    if request.karras is not None:
        if request.karras and scheduler not in KARRAS_SCHEDULERS:
            raise InvalidParameter.bad_value(
                "karras", "true", f"Karras sigmas go with {', '.join(KARRAS_SCHEDULERS)}, not {scheduler}"
            )
        return request.karras
    return bool(model.options.get("karras")) and scheduler in KARRAS_SCHEDULERS


def requested_steps(request: InferenceRequest) -> int:
    """The steps a request runs: its own, or LCM's default when lcm=true leaves them unset (the
    contract's default of 30 is for ordinary sampling). The price and the job both use this."""
    return request.steps if not request.lcm or "steps" in request.model_fields_set else LCM_STEPS


def price(
    settings: Settings, request: InferenceRequest, model: ModelRecord, width: int, height: int, steps: int
) -> int:
    """What a request costs, in millicredits; the early balance check and plan() both ask here."""
    reference = families.traits(model.family).reference_pixels
    return image_cost(settings.pricing, width, height, steps, request.num_images, request.lcm, reference)


def render_job(
    catalog: CatalogService,
    settings: Settings,
    request: InferenceRequest,
    model: ModelRecord,
    version: Version,
    pinned: Mapping[str, Any] | None = None,
    init_image: bytes | None = None,
) -> tuple[TextToImageJob, dict[str, Any]]:
    """The job a request asks for, and the record's "resolved" values: what the server chose
    where the request left it open (seeds, defaults, LoRA versions). `pinned` holds resolved
    values to keep instead of choosing again (a stored record's, or a hires fix's size and seed);
    anything it lacks is resolved as for a fresh request. `init_image` (the upload's bytes) makes
    it image-to-image or ControlNet."""
    pinned = pinned or {}
    prompt, lora_weights = model_extras.requested_loras(request)
    if "loras" in pinned:
        loras = _pinned_loras(catalog, pinned["loras"])
    else:
        loras = model_extras.lora_specs(catalog, model, lora_weights)
        if request.lcm:
            loras = (*loras, model_extras.lcm_lora(catalog, model))
    steps = requested_steps(request)
    if request.lcm:
        scale = request.scale if request.scale is not None else LCM_SCALE
        scheduler: str = LCM_SCHEDULER
    else:
        scale = request.scale if request.scale is not None else (model.default_scale or DEFAULT_SCALE)
        scheduler = request.scheduler or model.default_scheduler or DEFAULT_SCHEDULER
    scheduler = pinned.get("scheduler", scheduler)
    karras = bool(pinned.get("karras", _karras(request, model, scheduler)))
    clip_skip = int(pinned.get("clip_skip", request.clip_skip or model.options.get("clip_skip", 1)))
    if "seeds" in pinned:
        seeds = tuple(int(seed) for seed in pinned["seeds"])
    else:
        base_seed = request.seed if request.seed >= 0 else secrets.randbelow(MAX_SEED + 1)
        seeds = tuple(base_seed + i for i in range(request.num_images))
    width, height = requested_size(request, model) if "width" not in pinned else (pinned["width"], pinned["height"])
    negative = request.negative_prompt
    if request.use_default_neg:
        negative = join_negative(negative, model.default_negative_prompt or settings.default_negative_prompt)
    negative = pinned.get("negative_prompt", negative)
    written, embeddings = apply_embeddings(catalog, model, {"prompt": prompt, "negative_prompt": negative})
    job = TextToImageJob(
        model=checkpoint_spec(catalog, model, version),
        prompt=written["prompt"],
        negative_prompt=written["negative_prompt"],
        width=int(width),
        height=int(height),
        steps=int(pinned.get("steps", steps)),
        guidance_scale=float(pinned.get("scale", scale)),
        scheduler=scheduler,
        seeds=seeds,
        loras=loras,
        karras=karras,
        clip_skip=clip_skip,
        embeddings=embeddings,
    )
    resolved: dict[str, Any] = {
        "seeds": list(job.seeds),
        "width": job.width,
        "height": job.height,
        "steps": job.steps,
        "scale": job.guidance_scale,
        "scheduler": job.scheduler,
        "karras": job.karras,
        "clip_skip": job.clip_skip,
        "negative_prompt": negative,
        "embeddings": [{"id": e.id, "version": e.version} for e in job.embeddings],
        "loras": [{"id": lora.id, "version": lora.version, "weight": lora.weight} for lora in job.loras],
    }
    if init_image is None:
        return job, resolved
    control = (
        model_extras.controlnet_specs(catalog, model, request.controlnet, request.controlnet_preprocess)
        if request.controlnet
        else None
    )
    prepared = prepare_image(init_image, job.width, job.height, settings.max_upload_pixels, settings.upload_background)
    if control is None:
        return ImageToImageJob(**vars(job), init_image=prepared, strength=request.image_strength), resolved
    controlnet, annotator = control
    resolved["controlnet"] = {"id": controlnet.id, "version": controlnet.version}
    resolved["annotator"] = {"id": annotator.id, "version": annotator.version} if annotator else None
    control_job = ControlNetJob(
        **vars(job),
        control_image=prepared,
        controlnet=controlnet,
        annotator=annotator,
        preprocess=request.controlnet_preprocess,
    )
    return control_job, resolved


class InferenceService(ServingModule):
    async def plan(self, token: TokenInfo, request: InferenceRequest, init_image: bytes | None = None) -> Plan:
        """Text-to-image, or image-to-image / ControlNet when `init_image` (the upload's bytes) is given."""
        if request.num_images > self.settings.max_num_images:
            raise InvalidParameter.bad_value(
                "num_images", request.num_images, f"must be an integer from 1 to {self.settings.max_num_images}"
            )
        if request.controlnet and init_image is None:
            raise InvalidParameter.missing("init_image_file")  # the photo or map a ControlNet follows
        model = await to_thread.run_sync(self.catalog.get, request.model_id, Kind.CHECKPOINT)
        version = model.version(request.version)
        job, resolved = await to_thread.run_sync(
            lambda: render_job(self.catalog, self.settings, request, model, version, init_image=init_image)
        )
        cost = price(self.settings, request, model, job.width, job.height, job.steps)
        params = params_document(request.model_dump(mode="json"), resolved)
        # The prepared image, so that a job queued before a restart runs on the same pixels.
        inputs = {}
        if isinstance(job, ImageToImageJob):
            inputs["init_image"] = job.init_image
        elif isinstance(job, ControlNetJob):
            inputs["init_image"] = job.control_image
        return Plan("image", job, cost, model.id, version.version, params, inputs)

    def answer(self, record: InferenceRecord, base_url: str) -> InferenceResponse:
        control = (record.files or {}).get("control_image")
        return InferenceResponse(
            images=[f"{base_url}/files/{key}" for key in record.outputs],
            credit_cost=from_milli(record.credit_cost),
            inf_id=record.id,
            seeds=[int(seed) for seed in record.resolved["seeds"]],
            control_image=f"{base_url}/files/{control}" if control else None,
        )

    async def restore(self, record: InferenceRecord, inputs: dict[str, bytes]) -> Job:
        """The job of a record queued before a restart, resolved again with its values pinned."""

        def rebuild() -> Job:
            request = InferenceRequest.model_validate({**record.request, "access_token": ""})
            model = self.catalog.get(record.model_id, Kind.CHECKPOINT)
            version = model.version(record.version)
            pinned = record.resolved
            job, _ = render_job(self.catalog, self.settings, request, model, version, pinned, inputs.get("init_image"))
            return job

        return await to_thread.run_sync(rebuild)

    async def check_affordable(self, token: TokenInfo, request: InferenceRequest) -> None:
        """Refuse before the upload is read or decoded when the balance cannot pay the request: the
        price plan() will charge, at the size the model renders and its family's reference."""
        model = await to_thread.run_sync(self.catalog.get, request.model_id, Kind.CHECKPOINT)
        width, height = requested_size(request, model)
        self.accounts.check_affordable(
            token, price(self.settings, request, model, width, height, requested_steps(request))
        )
