"""Browser tests: Debian's headless Chromium driven by Playwright for Python, against a real
`daguerre serve` process, all inside a fresh network namespace with only loopback up.

Chromium reaches out by itself when it starts (DNS, Google's servers), so it never runs in the
test's own namespace: `run_scenarios` starts `unshare -n`, brings `lo` up, and runs
tests/browser/runner.py there, which starts the server and the browser, runs a scenario module's
`scenario_*` functions and prints one JSON report. The pytest test then asserts on what each
scenario observed. Inside the namespace nothing but loopback exists, and each page also aborts,
and records, every request to another host, so a test can assert that our pages attempted none.

The outer side (`unavailable`, `run_scenarios`) needs neither Playwright nor Chromium; the inner
side (`Session`) is used by the runner and the scenario modules.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Request, Route, ViewportSize

    from tests.support.server import LiveServer

ROOT = Path(__file__).resolve().parent.parent.parent
# Debian's package (`apt-get install chromium`), not Playwright's download: nothing is fetched.
CHROMIUM = Path(os.environ.get("DAGUERRE_CHROMIUM", "/usr/bin/chromium"))
# The name the browser gives the server (mapped to 127.0.0.1 in Chromium's resolver): pages behave
# as on a real deployment, not as on localhost, which some libraries treat specially.
SERVER_HOST = "daguerre.test"
VIEWPORT: ViewportSize = {"width": 1000, "height": 700}
ACTION_TIMEOUT_MS = 15_000


# --- outside the namespace: what the pytest test calls ---------------------------------------


@cache
def unavailable() -> str | None:
    """Why browser tests cannot run here (the skip reason), or None when they can."""
    if not sys.platform.startswith("linux"):
        return "browser tests need Linux network namespaces (unshare -n)"
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"browser tests need `{tool}` ({package})"
    if not os.access(CHROMIUM, os.X_OK):
        return f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium, or set DAGUERRE_CHROMIUM)"
    if importlib.util.find_spec("playwright") is None:
        return "browser tests need Playwright for Python (the `test` extra)"
    try:
        trial = subprocess.run(
            ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        return "unshare -n did not answer in 10 s"
    if trial.returncode != 0:
        return f"browser tests need a network namespace (root): `unshare -n` failed: {trial.stderr.strip()}"
    return None


@dataclass
class ScenarioResult:
    name: str
    ok: bool
    error: str | None
    observed: dict[str, Any]
    blocked: list[str]
    page_errors: list[str]
    console_errors: list[str]
    screenshots: list[str]
    seconds: float

    def passed(self) -> dict[str, Any]:
        """What the scenario observed; fails the test with its error and screenshots if it raised."""
        assert self.ok, f"browser scenario {self.name} failed: {self.error}\nscreenshots: {self.screenshots}"
        return self.observed


@dataclass
class BrowserRun:
    scenarios: dict[str, ScenarioResult]
    out_dir: Path
    server_log: str

    def __getitem__(self, name: str) -> ScenarioResult:
        assert name in self.scenarios, f"no scenario {name!r}; ran {sorted(self.scenarios)}"
        return self.scenarios[name]


def run_scenarios(module: str, out_dir: Path, timeout_s: float = 240) -> BrowserRun:
    """Runs every `scenario_*` function of `module` (e.g. "tests.browser.docs_pages") in a fresh
    network namespace, with the server and the browser started there; screenshots go to out_dir.

    The scenarios run in name order against one server (the demo model, one token: what one changes,
    credits or records, the next sees), each in its own browser context (no shared cookies or
    storage). About 20 s go to building the demo model and starting the server, a few to Chromium.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        "unshare",
        "-n",
        "bash",
        "-c",
        'ip link set lo up && exec "$@"',
        "browser-runner",
        sys.executable,
        "-m",
        "tests.browser.runner",
        module,
        "--out",
        str(out_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(_import_roots())}
    # Its own process group, so a runner that overruns is stopped with the server it started.
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"the browser runner ran past {timeout_s} s\n{stderr[-4000:]}") from None
    lines = stdout.strip().splitlines()
    assert process.returncode == 0 and lines, (
        f"the browser runner failed (exit {process.returncode})\n{stdout[-2000:]}\n{stderr[-4000:]}"
    )
    report = json.loads(lines[-1])
    print(f"browser screenshots: {out_dir}")
    return BrowserRun(
        scenarios={name: ScenarioResult(name=name, **fields) for name, fields in report["scenarios"].items()},
        out_dir=out_dir,
        server_log=report["server_log"],
    )


def _import_roots() -> list[str]:
    # The runner imports `tests` and `daguerre` from where this process does (a worktree's src/
    # before an editable install's), so the namespace runs the code under test.
    import daguerre

    roots = [str(ROOT), str(Path(daguerre.__file__).resolve().parent.parent)]
    inherited = os.environ.get("PYTHONPATH")
    return roots + ([inherited] if inherited else [])


# --- inside the namespace: what the runner and the scenario modules use ---------------------


def only_loopback() -> bool:
    """True in a namespace with no interface but `lo`: the browser may start."""
    import socket

    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def is_server_url(url: str) -> bool:
    """The server under test, or anything else on loopback."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    host = parts.hostname or ""
    if host in (SERVER_HOST, "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Guard:
    """Aborts and records every request a page makes to a host other than the server, and records
    the page's uncaught errors and console errors."""

    blocked: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def route(self, route: Route, request: Request) -> None:
        if is_server_url(request.url):
            route.continue_()
        else:
            self.blocked.append(f"{request.method} {request.url} ({request.resource_type})")
            route.abort("blockedbyclient")

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)


@dataclass
class Session:
    """One scenario's view of the running server and browser: guarded pages and screenshots."""

    server: LiveServer
    browser: Browser
    out_dir: Path
    scenario: str
    guard: Guard = field(default_factory=Guard)
    screenshots: list[str] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)
    _context: BrowserContext | None = None

    @property
    def url(self) -> str:
        """The server's base URL as the browser reaches it."""
        return f"http://{SERVER_HOST}:{urlsplit(self.server.url).port}"

    def new_page(self) -> Page:
        if self._context is None:
            # Service workers would fetch outside the routes; none of our pages needs one.
            self._context = self.browser.new_context(viewport=VIEWPORT, service_workers="block")
            self._context.set_default_timeout(ACTION_TIMEOUT_MS)
            self._context.route("**/*", self.guard.route)
        page = self._context.new_page()
        self.guard.watch(page)
        self.pages.append(page)
        return page

    def screenshot(self, page: Page, name: str) -> Path:
        path = self.out_dir / f"{self.scenario}-{name}.png"
        page.screenshot(path=path)
        self.screenshots.append(str(path))
        return path

    def close(self) -> None:
        if self._context is not None:
            self._context.close()


@contextmanager
def chromium() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    assert only_loopback(), "Chromium reaches out when it starts: run it through run_scenarios (unshare -n)"
    with sync_playwright() as playwright:
        # As root Playwright adds --no-sandbox itself; Chromium's sandbox refuses root.
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            timeout=60_000,
            args=[f"--host-resolver-rules=MAP {SERVER_HOST} 127.0.0.1"],
        )
        try:
            yield browser
        finally:
            browser.close()
