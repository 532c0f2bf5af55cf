from __future__ import annotations

from fastapi import APIRouter, Request

from daguerre.api.body import read_fields
from daguerre.api.dependencies import authenticate, base_url, services
from daguerre.api.openapi import ERROR_RESPONSES, form_body
from daguerre.errors import DaguerreError
from daguerre.protocol.fields import parse
from daguerre.protocol.inference import InferenceRequest, InferenceResponse

router = APIRouter()


@router.post(
    "/api/inference",
    response_model=InferenceResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=form_body(InferenceRequest),
    summary="Generate images from a prompt",
)
async def inference(request: Request) -> InferenceResponse:
    fields, files = await read_fields(request)
    token = await authenticate(request, fields)
    body = parse(InferenceRequest, fields)
    if files:
        raise DaguerreError(f"this server does not take uploads on /api/inference yet (got {', '.join(files)})")
    return await services(request).inference.text_to_image(token, body, base_url(request))
