from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from daguerre.api.dependencies import read_request, services
from daguerre.api.openapi import ERROR_RESPONSES, form_body
from daguerre.api.routes.jobs import deliver, job_options
from daguerre.errors import DaguerreError
from daguerre.protocol.fields import parse
from daguerre.protocol.inference import InferenceRequest, InferenceResponse
from daguerre.protocol.jobs import JobAccepted, JobOptions
from daguerre.services.uploads import FIELD, read_upload

router = APIRouter()


@router.post(
    "/api/inference",
    response_model=InferenceResponse | JobAccepted,
    response_model_exclude_none=True,
    responses=ERROR_RESPONSES,
    openapi_extra=form_body(
        InferenceRequest, files={FIELD: "img2img / ControlNet base image (multipart)"}, options=JobOptions
    ),
    summary="Generate images from a prompt, optionally from a base image (img2img, ControlNet)",
)
async def inference(request: Request) -> BaseModel:
    token, fields, files = await read_request(request)
    settings = services(request).settings
    body = parse(InferenceRequest, fields, settings.max_prompt_chars)
    options = await job_options(request, fields)
    unknown = sorted(set(files) - {FIELD})
    if unknown:
        raise DaguerreError(f"unexpected file field {', '.join(unknown)}: /api/inference takes one file, {FIELD}")
    init_image = None
    if FIELD in files:
        # The price is known from the fields: a caller who cannot pay gets no upload decoded.
        await services(request).inference.check_affordable(token, body)
        init_image = await read_upload(files[FIELD], settings.max_upload_bytes)
    serving = services(request).inference
    plan = await serving.plan(token, body, init_image)
    return await deliver(request, token, plan, options, serving.answer)
