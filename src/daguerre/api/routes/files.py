from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from daguerre.api.dependencies import services
from daguerre.services.storage import content_type

router = APIRouter()


@router.get("/files/{key:path}", summary="An output file (image or video)")
async def get_file(key: str, request: Request) -> Response:
    data = await to_thread.run_sync(services(request).storage.get, key)
    # Keys are random and never rewritten, so clients and proxies may cache forever.
    headers = {"Cache-Control": "public, max-age=31536000, immutable"}
    return Response(content=data, media_type=content_type(key), headers=headers)
