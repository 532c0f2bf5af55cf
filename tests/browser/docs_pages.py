"""Browser scenarios for /docs (Swagger UI) and /redoc (ReDoc); tests/test_docs_offline.py asserts
on what they observe. Run by tests/browser/runner.py: every request to another host is aborted."""

from __future__ import annotations

from typing import Any

from tests.support.browser import Session


def scenario_swagger_ui(session: Session) -> dict[str, Any]:
    page = session.new_page()
    page.goto(f"{session.url}/docs")
    page.locator(".opblock").first.wait_for()
    operations = page.locator(".opblock-summary").evaluate_all(
        "blocks => blocks.map(b => [b.querySelector('.opblock-summary-method').textContent,"
        " b.querySelector('.opblock-summary-path').dataset.path])"
    )
    session.screenshot(page, "docs")
    # "Try it out" on GET /health: the page calls this server and shows its answer.
    health = page.locator(".opblock-get", has=page.locator("[data-path='/health']"))
    health.locator(".opblock-summary").click()
    health.get_by_role("button", name="Try it out").click()
    health.get_by_role("button", name="Execute").click()
    answer = health.locator(".live-responses-table tbody .response-col_status").first
    answer.wait_for()
    return {
        "title": page.locator(".info .title").inner_text(),
        "operations": [f"{method} {path}" for method, path in operations],
        "errors": page.locator(".errors-wrapper").all_inner_texts(),
        "try_it_status": answer.inner_text().strip(),
        "try_it_body": health.locator(".live-responses-table .microlight").first.inner_text(),
    }


def scenario_redoc(session: Session) -> dict[str, Any]:
    page = session.new_page()
    page.goto(f"{session.url}/redoc")
    page.locator("[role=menuitem]").first.wait_for()
    sidebar = [" ".join(text.split()) for text in page.locator("[role=menuitem]").all_inner_texts()]
    session.screenshot(page, "redoc")
    # Search runs in a web worker ReDoc builds from a blob: URL.
    page.get_by_placeholder("Search...").fill("liveness")
    results = page.locator("[data-role='search:results'] [role=menuitem]")
    results.first.wait_for()
    return {
        "title": page.locator("h1").first.inner_text(),
        "sidebar": sidebar,
        "search_results": [" ".join(text.split()) for text in results.all_inner_texts()],
    }
