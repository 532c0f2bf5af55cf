"""Runs one scenario module's `scenario_*` functions against a real server in headless Chromium.

Started by tests.support.browser.run_scenarios inside a fresh network namespace (it refuses to
start the browser anywhere else); prints one JSON line: per scenario, whether it passed, what it
observed, the requests to other hosts that were blocked, the page's errors and the screenshots.
Exit status 0 when every scenario ran, passed or not; anything else is a failure of the harness.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.browser import Session, chromium, only_loopback
from tests.support.server import live_server

PREFIX = "scenario_"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("module", help="e.g. tests.browser.docs_pages")
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshots")
    arguments = parser.parse_args()
    if not only_loopback():
        print("refusing to run: not in a namespace with only loopback (use run_scenarios)", file=sys.stderr)
        return 2
    module = importlib.import_module(arguments.module)
    scenarios = [
        (name.removeprefix(PREFIX), function)
        for name, function in inspect.getmembers(module, inspect.isfunction)
        if name.startswith(PREFIX) and function.__module__ == module.__name__
    ]
    assert scenarios, f"{arguments.module} has no {PREFIX}* functions"
    with (
        tempfile.TemporaryDirectory(prefix="daguerre-browser-") as data_dir,
        # A module that needs more than the demo image model says FULL_DEMO = True.
        live_server(Path(data_dir), full_demo=getattr(module, "FULL_DEMO", False)) as server,
        chromium() as browser,
    ):
        report = {
            name: run_one(Session(server=server, browser=browser, out_dir=arguments.out, scenario=name), function)
            for name, function in scenarios
        }
        server_log = server.log_text()[-4000:]
    print(json.dumps({"scenarios": report, "server_log": server_log}))
    return 0


def run_one(session: Session, scenario: Callable[[Session], dict[str, Any]]) -> dict[str, Any]:
    started = time.monotonic()
    ok, error, observed = True, None, {}
    try:
        observed = scenario(session)
    except Exception as failure:
        # The scenario's own lines and the error; Playwright's internal frames say nothing more.
        frames = [f for f in traceback.extract_tb(failure.__traceback__) if "site-packages" not in f.filename]
        ok, error = False, "".join(traceback.format_list(frames) + traceback.format_exception_only(failure))
        for index, page in enumerate(session.pages):
            try:
                session.screenshot(page, f"failed-{index}")
            except Exception as unreadable:  # the page may be what broke; the error above says why
                print(f"no screenshot of {session.scenario}: {unreadable}", file=sys.stderr)
    finally:
        session.close()
    return {
        "ok": ok,
        "error": error,
        "observed": observed,
        "blocked": session.guard.blocked,
        "page_errors": session.guard.page_errors,
        "console_errors": session.guard.console_errors,
        "screenshots": session.screenshots,
        "seconds": round(time.monotonic() - started, 2),
    }


if __name__ == "__main__":
    sys.exit(main())
