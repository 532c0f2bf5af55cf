from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from daguerre.api.dependencies import services
from daguerre.api.envelope import error_body
from daguerre.errors import NotFound
from daguerre.services.storage import content_type

router = APIRouter()


@router.get("/files/{key:path}", summary="An output file (image or video)")
async def get_file(key: str, request: Request) -> Response:
    try:
        data = await to_thread.run_sync(services(request).storage.get, key)
    except NotFound as exc:
        # A real 404 whatever the http_error_status setting: browsers and caches read files.
        return JSONResponse(error_body(exc.message), status_code=404)
    # Keys are random and never rewritten, so clients and proxies may cache forever.
    headers = {"Cache-Control": "public, max-age=31536000, immutable"}
    return Response(content=data, media_type=content_type(key), headers=headers)
