"""GET /docs (Swagger UI) and GET /redoc (ReDoc), with their scripts and styles served by this server.

FastAPI's own pages load them from a CDN, so where the server cannot reach the Internet (an
air-gapped site) they are blank. FastAPI's page builders are kept; only the asset URLs change, to
the files vendored under api/static/docs (their README says from where, which version, and why not
a PyPI package).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).resolve().parent.parent / "static" / "docs"
ASSETS_URL = "/static/docs"
# Everything from this server: an asset that would reach another host is refused by the browser
# before any request leaves (ReDoc's sidebar loads Redocly's logo from their CDN, unconditionally).
# Inline scripts and styles are allowed because FastAPI's Swagger page starts Swagger UI with an
# inline script and ReDoc's styles are injected at run time; this policy keeps hosts out, it is not
# the XSS defence of an application page. ReDoc builds its search worker from a blob: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)

router = APIRouter()


def _root(request: Request) -> str:
    # Behind a proxy that mounts the app under a prefix, every URL the page loads carries it.
    return str(request.scope.get("root_path", "")).rstrip("/")


def _openapi_url(request: Request) -> str:
    openapi_url = request.app.openapi_url
    assert openapi_url is not None, "the docs pages need the OpenAPI document"
    return f"{_root(request)}{openapi_url}"


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    assets = f"{_root(request)}{ASSETS_URL}/swagger-ui"
    page = get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png",
        # The API authenticates with a token field, not OAuth: no redirect page to offer.
        oauth2_redirect_url=None,
    )
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{_root(request)}{ASSETS_URL}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{_root(request)}{ASSETS_URL}/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


def install_docs(app: FastAPI) -> None:
    """Adds /docs, /redoc and the assets they load; the app is created with docs_url=None, redoc_url=None."""
    # A mount is not an operation, so the OpenAPI document (and the fuzz test that walks it) never sees it.
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
    app.include_router(router)
