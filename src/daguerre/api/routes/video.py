from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from daguerre.api.dependencies import base_url, read_request, services
from daguerre.api.openapi import ERROR_RESPONSES, form_body
from daguerre.api.routes.jobs import deliver, job_options
from daguerre.errors import DaguerreError
from daguerre.protocol.fields import parse
from daguerre.protocol.jobs import JobAccepted, JobOptions
from daguerre.protocol.video import VideoRequest, VideoResponse

router = APIRouter()


@router.post(
    "/api/video",
    response_model=VideoResponse | JobAccepted,
    responses=ERROR_RESPONSES,
    openapi_extra=form_body(VideoRequest, options=JobOptions),
    summary="Generate a video from a prompt, or from an image and a prompt",
)
async def video(request: Request) -> BaseModel:
    token, fields, files = await read_request(request)
    body = parse(VideoRequest, fields, services(request).settings.max_prompt_chars)
    options = await job_options(request, fields)
    if files:
        raise DaguerreError(f"/api/video takes the first frame as image_url, not as an upload (got {', '.join(files)})")
    base = base_url(request)
    # image_url pointing at this server is read from storage: under the public URL, or the
    # address the client reached this server by.
    own = {base, str(request.base_url).rstrip("/")}
    serving = services(request).video
    plan = await serving.plan(token, body, own)
    return await deliver(request, token, plan, options, serving.answer)
