"""The README's browser example: its `javascript` block, read from README.md, run unchanged in a
page of the server against an async job; tests/test_readme_eventsource.py asserts on what it saw.

Before the snippet runs, the page's EventSource is instrumented (not replaced): every event that
reaches one of the snippet's listeners is recorded in order, and so is `close()`.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.support.browser import ROOT, Session

WAIT_MS = 90_000
STEPS = 6

# Records (name, data) for each event as a listener of the snippet's receives it, the sources the
# listeners were added to, and close().
INSTRUMENT = """() => {
  window.seen = [];
  window.closedSources = 0; // not window.closed: that is the window's own, read-only
  window.sources = new Set();
  const add = EventSource.prototype.addEventListener;
  EventSource.prototype.addEventListener = function (name, listener, options) {
    window.sources.add(this);
    const recording = (e) => {
      window.seen.push([name, JSON.parse(e.data)]);
      return listener.call(this, e);
    };
    return add.call(this, name, recording, options);
  };
  const close = EventSource.prototype.close;
  EventSource.prototype.close = function () {
    window.closedSources += 1;
    return close.call(this);
  };
}"""


def readme_javascript() -> str:
    blocks = re.findall(r"```javascript\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, f"expected one javascript block in README.md, found {len(blocks)}"
    return str(blocks[0])


def scenario_eventsource(session: Session) -> dict[str, Any]:
    server, token = session.server.url, session.server.token
    form = {"access_token": token, "model_id": "demo", "prompt": "a lighthouse", "num_images": 1, "async": "true"}
    with httpx.Client(base_url=server, timeout=60) as client:
        # A long job ahead keeps ours queued until the page listens, on any machine; cancelled
        # once the page has seen ours queued, it lets ours run at once.
        ahead = client.post("/api/inference", data={**form, "width": 256, "height": 256, "steps": 50}).json()
        job = client.post("/api/inference", data={**form, "width": 128, "height": 128, "steps": STEPS}).json()
        assert ahead["error_code"] == 0 and job["error_code"] == 0, (ahead, job)
        page = session.new_page()
        streams: list[str] = []
        page.on("request", lambda request: streams.append(request.url) if "/events" in request.url else None)
        page.goto(f"{session.url}/health")
        page.evaluate(INSTRUMENT)
        page.evaluate(f"([BASE, TOKEN, infId]) => {{\n{readme_javascript()}\n}}", [session.url, token, job["inf_id"]])
        page.wait_for_function("window.seen.some(([name]) => name === 'queued')", timeout=WAIT_MS)
        queued_text = page.locator("p").last.inner_text()
        cancelled = client.post(f"/api/jobs/{ahead['inf_id']}/cancel", data={"access_token": token}).json()
        page.wait_for_function("window.closedSources", timeout=WAIT_MS)
        # The stream is closed: no reconnection comes, and nothing more reaches the listeners.
        page.wait_for_timeout(1500)
        session.screenshot(page, "finished")
        return {
            "inf_id": job["inf_id"],
            "base": session.url,
            "steps": STEPS,
            "ahead_cancelled": cancelled.get("status"),
            "queued_text": queued_text,
            "seen": page.evaluate("window.seen"),
            # 2 is CLOSED; one source: the snippet's.
            "ready_states": page.evaluate("[...window.sources].map((source) => source.readyState)"),
            "status_text": page.locator("p").last.inner_text(),
            "bar": page.locator("progress").last.evaluate("bar => bar.value"),
            "streams": streams,
            "job": client.get(f"/api/jobs/{job['inf_id']}", params={"access_token": token}).json(),
        }
