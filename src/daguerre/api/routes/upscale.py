from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from daguerre.api.dependencies import read_request, services
from daguerre.api.openapi import ERROR_RESPONSES, form_body
from daguerre.api.routes.jobs import deliver, job_options
from daguerre.protocol.fields import parse
from daguerre.protocol.jobs import JobAccepted, JobOptions
from daguerre.protocol.upscale import UpscaleRequest, UpscaleResponse

router = APIRouter()


@router.post(
    "/api/upscale",
    response_model=UpscaleResponse | JobAccepted,
    responses=ERROR_RESPONSES,
    openapi_extra=form_body(UpscaleRequest, options=JobOptions),
    summary="Upscale an image of an inference: ESRGAN, or a hires fix re-render",
)
async def upscale(request: Request) -> BaseModel:
    token, fields, _ = await read_request(request)
    body = parse(UpscaleRequest, fields)
    options = await job_options(request, fields)
    serving = services(request).upscale
    plan = await serving.plan(token, body)
    return await deliver(request, token, plan, options, serving.answer)
