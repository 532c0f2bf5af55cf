"""Serving POST /api/inference: resolve the model and defaults, charge, run, store, answer.

Credits are taken before the work starts (so concurrent requests cannot overspend) and given
back if the work fails.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict

from anyio import to_thread

from daguerre.engine.client import EngineClient
from daguerre.engine.jobs import ModelSpec, TextToImageJob
from daguerre.errors import DaguerreError, InvalidParameter
from daguerre.protocol.inference import (
    DEFAULT_SCALE,
    DEFAULT_SCHEDULER,
    MAX_SEED,
    InferenceRequest,
    InferenceResponse,
)
from daguerre.services.accounts import AccountService, TokenInfo, from_milli
from daguerre.services.catalog import CatalogService, Kind, ModelRecord, Version
from daguerre.services.inferences import InferenceStore, new_inference_id
from daguerre.services.pricing import image_cost
from daguerre.services.storage import Storage
from daguerre.settings import Settings


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


def undo_charge(
    accounts: AccountService, inferences: InferenceStore, token_id: int, cost: int, inf_id: str, exc: BaseException
) -> None:
    """Failed work costs nothing: refund the charge and mark the record failed."""
    message = exc.message if isinstance(exc, DaguerreError) else type(exc).__name__
    accounts.refund(token_id, cost, inf_id, note=message)
    inferences.fail(inf_id, message)


class InferenceService:
    def __init__(
        self,
        settings: Settings,
        accounts: AccountService,
        catalog: CatalogService,
        inferences: InferenceStore,
        storage: Storage,
        engine: EngineClient,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.catalog = catalog
        self.inferences = inferences
        self.storage = storage
        self.engine = engine

    async def text_to_image(self, token: TokenInfo, request: InferenceRequest, base_url: str) -> InferenceResponse:
        if request.num_images > self.settings.max_num_images:
            raise InvalidParameter.bad_value(
                "num_images", request.num_images, f"must be an integer from 1 to {self.settings.max_num_images}"
            )
        model = await to_thread.run_sync(self.catalog.get, request.model_id, Kind.CHECKPOINT)
        version = model.version(request.version)
        base_seed = request.seed if request.seed >= 0 else secrets.randbelow(MAX_SEED + 1)
        negative = request.negative_prompt
        if request.use_default_neg:
            negative = join_negative(negative, model.default_negative_prompt or self.settings.default_negative_prompt)
        job = TextToImageJob(
            model=model_spec(model, version),
            prompt=request.prompt,
            negative_prompt=negative,
            width=request.width,
            height=request.height,
            steps=request.steps,
            guidance_scale=request.scale if request.scale is not None else (model.default_scale or DEFAULT_SCALE),
            scheduler=request.scheduler or model.default_scheduler or DEFAULT_SCHEDULER,
            seeds=tuple(base_seed + i for i in range(request.num_images)),
        )
        cost = image_cost(self.settings.pricing, job.width, job.height, job.steps, request.num_images)
        inf_id = new_inference_id()
        params = {k: v for k, v in asdict(job).items() if k != "model"}
        await to_thread.run_sync(self.accounts.charge, token.id, cost, inf_id)
        try:
            await to_thread.run_sync(
                self.inferences.create, inf_id, token.id, "image", model.id, version.version, params, cost
            )
            result = await self.engine.submit(job)
            keys = [self.storage.new_key("images", result.extension) for _ in result.images]
            await to_thread.run_sync(self._store_all, keys, result.images)
            await to_thread.run_sync(self.inferences.finish, inf_id, keys)
        except BaseException as exc:
            await to_thread.run_sync(undo_charge, self.accounts, self.inferences, token.id, cost, inf_id, exc)
            raise
        return InferenceResponse(
            images=[f"{base_url}/files/{key}" for key in keys],
            credit_cost=from_milli(cost),
            inf_id=inf_id,
            seeds=list(job.seeds),
        )

    def _store_all(self, keys: list[str], blobs: tuple[bytes, ...]) -> None:
        for key, blob in zip(keys, blobs, strict=True):
            self.storage.put(key, blob)
