"""A webhook receiver on 127.0.0.1 for tests: it answers each call with the next of a scripted list
of statuses (the last repeats) and keeps what it was sent. Tests of the jobs API use it the same way:
allow "127.0.0.1" in `webhooks.allow_private_hosts`, pass `receiver.url` as webhook_url, then
`receiver.wait_for(n)` and verify each call with `standardwebhooks.Webhook(secret).verify`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it came


class Receiver:
    def __init__(self, statuses: list[int], url: str) -> None:
        self.statuses = statuses
        self.url = url
        self.calls: list[Call] = []
        self._changed = threading.Condition()

    def answer(self, call: Call) -> int:
        with self._changed:
            self.calls.append(call)
            self._changed.notify_all()
            return self.statuses[min(len(self.calls), len(self.statuses)) - 1]

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Call]:
        """The first `count` calls, once they have come; fails the test after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while len(self.calls) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"the receiver got {len(self.calls)} of {count} calls within {timeout_s} s"
                self._changed.wait(left)
            return self.calls[:count]


@contextmanager
def webhook_receiver(statuses: list[int] | None = None, path: str = "/hook") -> Iterator[Receiver]:
    """A receiver listening on 127.0.0.1 (a free port) until the block ends."""
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            call = Call(
                self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length), time.monotonic()
            )
            status = box[0].answer(call)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    receiver = Receiver(statuses or [200], f"http://127.0.0.1:{httpd.server_address[1]}{path}")
    box.append(receiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()
