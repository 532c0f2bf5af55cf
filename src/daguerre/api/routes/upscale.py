from __future__ import annotations

from fastapi import APIRouter, Request

from daguerre.api.dependencies import base_url, read_request, services
from daguerre.api.openapi import ERROR_RESPONSES, form_body
from daguerre.protocol.fields import parse
from daguerre.protocol.upscale import UpscaleRequest, UpscaleResponse

router = APIRouter()


@router.post(
    "/api/upscale",
    response_model=UpscaleResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=form_body(UpscaleRequest),
    summary="Upscale an image of an inference: ESRGAN, or a hires fix re-render",
)
async def upscale(request: Request) -> UpscaleResponse:
    token, fields, _ = await read_request(request)
    body = parse(UpscaleRequest, fields)
    return await services(request).upscale.upscale(token, body, base_url(request))
