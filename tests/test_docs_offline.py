"""/docs and /redoc work where the server works: their scripts and styles are served from the
package, and the pages reference no other host. The browser tests render both in headless
Chromium with every request to another host aborted (tests/support/browser.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from daguerre.app import create_app
from daguerre.settings import Settings
from tests.support.browser import BrowserRun, run_scenarios, unavailable

PAGES = ("/docs", "/redoc")
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return create_app(Settings(data_dir=tmp_path_factory.mktemp("docs")))


def referenced_urls(html: str) -> list[str]:
    """Every URL a page loads: src/href attributes, ReDoc's spec-url, Swagger UI's `url:`."""
    pairs = re.findall(r"""(?:src|href|spec-url)="([^"]*)"|\burl: '([^']*)'""", html)
    return [attribute or script for attribute, script in pairs]


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_only_this_servers_assets(app: FastAPI, page: str) -> None:
    client = TestClient(app)
    answer = client.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert re.findall(r"\w+://[^\s\"'<>]*", answer.text) == [], "the page names another host"
    urls = referenced_urls(answer.text)
    assert "/openapi.json" in urls and len(urls) >= 3, urls
    for url in urls:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        expected = CONTENT_TYPES[Path(url).suffix]
        assert asset.headers["content-type"].split(";")[0] == expected, url
        assert len(asset.content) > 0


@pytest.mark.parametrize("page", PAGES)
def test_page_policy_allows_no_other_host(app: FastAPI, page: str) -> None:
    policy = TestClient(app).get(page).headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'"
    for directive, sources in directives.items():
        # Keywords and the data:/blob: schemes only: a host source would let a page reach it.
        assert set(sources.split()) <= {"'self'", "'unsafe-inline'", "data:", "blob:"}, (directive, sources)


def test_pages_follow_a_proxy_prefix(app: FastAPI) -> None:
    client = TestClient(app, root_path="/daguerre")
    for page in PAGES:
        urls = referenced_urls(client.get(page).text)
        assert urls and all(url.startswith("/daguerre/") for url in urls), urls


def test_docs_routes_and_assets_stay_out_of_the_openapi_document(app: FastAPI) -> None:
    paths = TestClient(app).get("/openapi.json").json()["paths"]
    assert "/api/inference" in paths
    assert [path for path in paths if path.startswith(("/docs", "/redoc", "/static"))] == []


def test_missing_asset_is_the_404_envelope(app: FastAPI) -> None:
    answer = TestClient(app).get("/static/docs/swagger-ui/nothing.js")
    assert answer.status_code == 404
    assert answer.json()["error_code"] == 1


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> BrowserRun:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    return run_scenarios("tests.browser.docs_pages", tmp_path_factory.mktemp("docs-screenshots"))


def operations(app: FastAPI) -> list[tuple[str, str, str]]:
    return [
        (method.upper(), path, operation["summary"])
        for path, methods in app.openapi()["paths"].items()
        for method, operation in methods.items()
    ]


def assert_small_screenshots(paths: list[str]) -> None:
    assert paths
    for path in paths:
        data = Path(path).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < 400_000, path


@pytest.mark.slow
@pytest.mark.browser
def test_swagger_ui_renders_with_outside_requests_blocked(browser: BrowserRun, app: FastAPI) -> None:
    result = browser["swagger_ui"]
    observed: dict[str, Any] = result.passed()
    assert observed["operations"] == [f"{method} {path}" for method, path, _ in operations(app)]
    assert observed["title"].split()[0] == "daguerre" and observed["errors"] == []
    assert observed["try_it_status"] == "200" and '"status": "ok"' in observed["try_it_body"]
    assert result.blocked == [] and result.page_errors == [] and result.console_errors == []
    assert_small_screenshots(result.screenshots)


@pytest.mark.slow
@pytest.mark.browser
def test_redoc_renders_with_outside_requests_blocked(browser: BrowserRun, app: FastAPI) -> None:
    result = browser["redoc"]
    observed: dict[str, Any] = result.passed()
    assert observed["sidebar"] == [f"{method} {summary}" for method, _, summary in operations(app)]
    assert observed["search_results"] == ["GET Liveness and engine status"]
    assert result.blocked == [] and result.page_errors == []
    # ReDoc's sidebar always asks for Redocly's logo from their CDN; the page's policy refuses it
    # before any request is made (so nothing was blocked above), and the browser logs the refusal.
    assert [error for error in result.console_errors if "https://cdn.redoc.ly/redoc/logo-mini.svg" not in error] == []
    assert_small_screenshots(result.screenshots)
