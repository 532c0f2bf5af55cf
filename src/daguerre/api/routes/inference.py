from __future__ import annotations

from fastapi import APIRouter, Request

from daguerre.api.body import read_fields
from daguerre.api.dependencies import authenticate, base_url, services
from daguerre.api.openapi import ERROR_RESPONSES, form_body
from daguerre.errors import DaguerreError
from daguerre.protocol.fields import parse
from daguerre.protocol.inference import InferenceRequest, InferenceResponse
from daguerre.services.uploads import FIELD, read_upload

router = APIRouter()


@router.post(
    "/api/inference",
    response_model=InferenceResponse,
    response_model_exclude_none=True,
    responses=ERROR_RESPONSES,
    openapi_extra=form_body(InferenceRequest, files={FIELD: "img2img / ControlNet base image (multipart)"}),
    summary="Generate images from a prompt, optionally from a base image (img2img, ControlNet)",
)
async def inference(request: Request) -> InferenceResponse:
    fields, files = await read_fields(request)
    token = await authenticate(request, fields)
    body = parse(InferenceRequest, fields)
    unknown = sorted(set(files) - {FIELD})
    if unknown:
        raise DaguerreError(f"unexpected file field {', '.join(unknown)}: /api/inference takes one file, {FIELD}")
    settings = services(request).settings
    init_image = await read_upload(files[FIELD], settings.max_upload_bytes) if FIELD in files else None
    return await services(request).inference.generate(token, body, base_url(request), init_image)
