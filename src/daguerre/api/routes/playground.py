"""GET /: the playground, a page to try every feature of the API in a browser.

Static HTML, CSS and JavaScript modules from the package (api/static/playground), no build step.
The page learns everything from the API itself: the controls' ranges and defaults from
/openapi.json, the models from /api/models. Only the page's base URL is written into it, so it
works behind a proxy that mounts the server under a prefix.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

PAGE = Path(__file__).resolve().parent.parent / "static" / "playground" / "index.html"
# The page's scripts and styles; the page itself is only served at /, with its base and policy.
ASSETS = PAGE.parent / "assets"
ASSETS_URL = "/static/playground"
BASE_MARK = "{{base}}"
# The page's own code and styles come only from this server, and it connects only to this server.
# Images and videos are the API's answers: this server's files, or wherever its public_url or an
# operator's cover_img points, so any http(s) source may be shown (never run).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob: http: https:; media-src 'self' blob: http: https:; "
    "object-src 'none'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter()


@cache
def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/", include_in_schema=False)
async def playground(request: Request) -> HTMLResponse:
    root = str(request.scope.get("root_path", "")).rstrip("/")
    page = _page().replace(BASE_MARK, html.escape(f"{root}/", quote=True))
    return HTMLResponse(
        page,
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            # The page holds a token in localStorage: no one else may frame it or read referrers.
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        },
    )


def install_playground(app: FastAPI) -> None:
    """Adds / and the assets it loads (a mount: not an operation, so not in the OpenAPI document)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="playground-assets")
    app.include_router(router)
