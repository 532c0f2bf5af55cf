"""Serving POST /api/inference: resolve the model and defaults, charge, run, store, answer.

Credits are taken before the work starts (so concurrent requests cannot overspend) and given
back if the work fails.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict

from anyio import to_thread

from daguerre.engine.jobs import (
    LCM_SCHEDULER,
    ControlNetJob,
    ImageToImageJob,
    ModelSpec,
    TextToImageJob,
)
from daguerre.errors import InvalidParameter
from daguerre.protocol.inference import (
    DEFAULT_SCALE,
    DEFAULT_SCHEDULER,
    MAX_SEED,
    InferenceRequest,
    InferenceResponse,
)
from daguerre.services import model_extras
from daguerre.services.accounts import TokenInfo, from_milli
from daguerre.services.catalog import Kind, ModelRecord, Version
from daguerre.services.pricing import image_cost
from daguerre.services.serving import ServingModule
from daguerre.services.uploads import prepare_image

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
    )


def join_negative(negative_prompt: str, default: str) -> str:
    return ", ".join(p for p in (negative_prompt.strip(), default.strip()) if p)


class InferenceService(ServingModule):
    async def generate(
        self, token: TokenInfo, request: InferenceRequest, base_url: str, init_image: bytes | None = None
    ) -> InferenceResponse:
        """Text-to-image, or image-to-image / ControlNet when `init_image` (the upload's bytes) is given."""
        if request.num_images > self.settings.max_num_images:
            raise InvalidParameter.bad_value(
                "num_images", request.num_images, f"must be an integer from 1 to {self.settings.max_num_images}"
            )
        if request.controlnet and init_image is None:
            raise InvalidParameter.missing("init_image_file")  # the photo or map a ControlNet follows
        prompt, lora_weights = model_extras.requested_loras(request)
        model = await to_thread.run_sync(self.catalog.get, request.model_id, Kind.CHECKPOINT)
        version = model.version(request.version)
        job = await to_thread.run_sync(self._job, request, model, version, prompt, lora_weights, init_image)
        cost = image_cost(self.settings.pricing, job.width, job.height, job.steps, request.num_images, request.lcm)
        params = {k: v for k, v in asdict(job).items() if k != "model" and not isinstance(v, bytes)}
        async with self.lifecycle.charged(token.id, cost, "image", model.id, version.version, params) as inf_id:
            result = await self.engine.submit(job)
            keys = [self.storage.new_key("images", result.extension) for _ in result.images]
            files = dict(zip(keys, result.images, strict=True))
            control_key = None
            if result.control_image is not None:
                control_key = self.storage.new_key("images", ".png")
                files[control_key] = result.control_image
            await self.lifecycle.deliver(inf_id, files, keys)
        return InferenceResponse(
            images=[f"{base_url}/files/{key}" for key in keys],
            credit_cost=from_milli(cost),
            inf_id=inf_id,
            seeds=list(job.seeds),
            control_image=f"{base_url}/files/{control_key}" if control_key else None,
        )

    def check_affordable(self, token: TokenInfo, request: InferenceRequest) -> None:
        """Refuse before the upload is read or decoded when the balance cannot pay the request."""
        steps = request.steps if not request.lcm or "steps" in request.model_fields_set else LCM_STEPS
        cost = image_cost(self.settings.pricing, request.width, request.height, steps, request.num_images, request.lcm)
        self.accounts.check_affordable(token, cost)

    def _job(
        self,
        request: InferenceRequest,
        model: ModelRecord,
        version: Version,
        prompt: str,
        lora_weights: dict[str, float],
        init_image: bytes | None,
    ) -> TextToImageJob:
        """Resolve defaults, LoRAs, LCM and ControlNet against the catalog; prepare the upload."""
        loras = model_extras.lora_specs(self.catalog, model, lora_weights)
        if request.lcm:
            loras = (*loras, model_extras.lcm_lora(self.catalog, model))
            steps = request.steps if "steps" in request.model_fields_set else LCM_STEPS
            scale = request.scale if request.scale is not None else LCM_SCALE
            scheduler = LCM_SCHEDULER
        else:
            steps = request.steps
            scale = request.scale if request.scale is not None else (model.default_scale or DEFAULT_SCALE)
            scheduler = request.scheduler or model.default_scheduler or DEFAULT_SCHEDULER
        control = (
            model_extras.controlnet_specs(self.catalog, model, request.controlnet, request.controlnet_preprocess)
            if request.controlnet
            else None
        )
        base_seed = request.seed if request.seed >= 0 else secrets.randbelow(MAX_SEED + 1)
        negative = request.negative_prompt
        if request.use_default_neg:
            negative = join_negative(negative, model.default_negative_prompt or self.settings.default_negative_prompt)
        common = dict(
            model=model_spec(model, version),
            prompt=prompt,
            negative_prompt=negative,
            width=request.width,
            height=request.height,
            steps=steps,
            guidance_scale=scale,
            scheduler=scheduler,
            seeds=tuple(base_seed + i for i in range(request.num_images)),
            loras=loras,
        )
        if init_image is None:
            return TextToImageJob(**common)  # type: ignore[arg-type]
        prepared = prepare_image(
            init_image,
            request.width,
            request.height,
            self.settings.max_upload_pixels,
            self.settings.upload_background,
        )
        if control is not None:
            controlnet, annotator = control
            return ControlNetJob(
                **common,  # type: ignore[arg-type]
                control_image=prepared,
                controlnet=controlnet,
                annotator=annotator,
                preprocess=request.controlnet_preprocess,
            )
        return ImageToImageJob(**common, init_image=prepared, strength=request.image_strength)  # type: ignore[arg-type]
