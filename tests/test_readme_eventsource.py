"""The README's browser EventSource example works as written: headless Chromium runs the README's
`javascript` block in a page of the demo server against an async job (tests/browser/
readme_eventsource.py); its events arrive in order, the page shows the result, and the stream ends
without a reconnection."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.browser import BrowserRun, run_scenarios, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> BrowserRun:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    return run_scenarios("tests.browser.readme_eventsource", tmp_path_factory.mktemp("eventsource-screenshots"))


def collapse(names: list[str]) -> list[str]:
    """Runs of one event name as one: queued may come more than once, progress once a step."""
    return [name for index, name in enumerate(names) if index == 0 or names[index - 1] != name]


def test_readme_eventsource_example_follows_a_job_to_its_end(browser: BrowserRun) -> None:
    result = browser["eventsource"]
    observed: dict[str, Any] = result.passed()
    seen: list[tuple[str, dict[str, Any]]] = [(name, data) for name, data in observed["seen"]]
    names = [name for name, _ in seen]
    assert collapse(names) == ["queued", "started", "progress", "finished"], names

    positions = [data["queue_position"] for name, data in seen if name == "queued"]
    assert positions[0] == 1 and positions[-1] == 0, positions  # behind the job ahead, then first
    assert observed["queued_text"] == "queued, 1 ahead"
    assert observed["ahead_cancelled"] == "cancelled"

    steps = observed["steps"]
    progress = [data for name, data in seen if name == "progress"]
    assert [(p["step"], p["total"]) for p in progress] == [(step, steps) for step in range(1, steps + 1)]
    assert observed["bar"] == 1

    final = seen[-1][1]
    assert final["status"] == "done" and final["inf_id"] == observed["inf_id"]
    # URLs start with the asking request's base: the browser's host here, 127.0.0.1 for the status.
    assert [urlsplit(url).path for url in final["images"]] == [urlsplit(url).path for url in observed["job"]["images"]]
    assert len(final["images"]) == 1 and final["images"][0].startswith(observed["base"])
    assert observed["status_text"] == " ".join(final["images"])

    # The snippet closed its one source on the final event, and the browser did not reconnect.
    assert observed["ready_states"] == [2]
    assert len(observed["streams"]) == 1, observed["streams"]
    assert result.blocked == [] and result.page_errors == [] and result.console_errors == []
    assert result.screenshots
