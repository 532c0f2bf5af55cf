from __future__ import annotations

from fastapi import APIRouter, Request

from daguerre.api.dependencies import base_url, read_request, services
from daguerre.api.openapi import ERROR_RESPONSES, form_body
from daguerre.errors import DaguerreError
from daguerre.protocol.fields import parse
from daguerre.protocol.video import VideoRequest, VideoResponse

router = APIRouter()


@router.post(
    "/api/video",
    response_model=VideoResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=form_body(VideoRequest),
    summary="Generate a video from a prompt, or from an image and a prompt",
)
async def video(request: Request) -> VideoResponse:
    token, fields, files = await read_request(request)
    body = parse(VideoRequest, fields, services(request).settings.max_prompt_chars)
    if files:
        raise DaguerreError(f"/api/video takes the first frame as image_url, not as an upload (got {', '.join(files)})")
    base = base_url(request)
    # image_url pointing at this server is read from storage: under the public URL, or the
    # address the client reached this server by.
    own = {base, str(request.base_url).rstrip("/")}
    return await services(request).video.generate(token, body, base, own)
