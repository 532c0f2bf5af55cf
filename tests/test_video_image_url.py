"""image_url: what is read from this server's storage, and every refusal of a remote URL.

Address refusals happen before any connection, so they need no traffic; names resolve through a
stand-in resolver. The limits beyond the address check (size, time, content, redirects) are
exercised against a small HTTP server on 127.0.0.1, with loopback allowed the way an operator
allows private addresses, or counted as public where the test is about a redirect's next hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daguerre.errors import InvalidParameter
from daguerre.services import remote_images
from daguerre.services.remote_images import RemoteImages, is_public
from daguerre.services.storage import Storage
from daguerre.settings import RemoteImageSettings
from tests.support.images import solid_png


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, length: bool = True) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client gave up (the time-limit test)
            self.wfile.write(body)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/ok.png":
            self._send(200, solid_png(40, 60, "red"), {"Content-Type": "image/png"})
        elif path == "/big.png":
            self._send(200, solid_png(400, 400, "blue") + b"\0" * 5000)
        elif path == "/unsized.png":
            # No Content-Length: HTTP/1.0 ends the body by closing, so only counting can stop it.
            self._send(200, b"\0" * 5000, length=False)
        elif path == "/slow.png":
            time.sleep(2)
            self._send(200, solid_png(40, 60, "red"))
        elif path == "/text":
            self._send(200, b"hello, not an image", {"Content-Type": "text/plain"})
        elif path == "/huge.png":
            self._send(200, solid_png(3000, 3000, "white"))
        elif path == "/redirect":
            self._send(302, headers={"Location": query.removeprefix("to=")})
        elif path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        else:
            self._send(404, b"not found")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def fetcher(tmp_path: Path, resolver: dict[str, list[str]] | None = None, **settings: object) -> RemoteImages:
    async def resolve(host: str, port: int) -> list[str]:
        if resolver is not None and host in resolver:
            return resolver[host]
        return await remote_images.resolve(host, port)

    limits = RemoteImageSettings(**settings)  # type: ignore[arg-type]
    return RemoteImages(limits, Storage(str(tmp_path / "out")), resolve)


def refused(images: RemoteImages, url: str, own: tuple[str, ...] = ()) -> str:
    with pytest.raises(InvalidParameter) as info:
        asyncio.run(images.fetch(url, own))
    assert info.value.field == "image_url"
    assert url in info.value.message or "image_url" in info.value.message
    return info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "gopher://example.com/",
        "data:image/png;base64,AA",
        "/files/x.png",
    ],
)
def test_only_http_and_https_are_fetched(tmp_path: Path, url: str) -> None:
    assert "only http and https" in refused(fetcher(tmp_path), url)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",  # loopback
        "10.1.2.3",  # private
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",  # link-local: cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",  # unspecified
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "[::1]",
        "[fe80::1]",
        "[fc00::1]",
        "[::ffff:127.0.0.1]",  # IPv4-mapped loopback
        "[2002:a00:1::]",  # 6to4 around 10.0.0.1
    ],
)
def test_non_public_addresses_are_refused_before_connecting(tmp_path: Path, host: str) -> None:
    message = refused(fetcher(tmp_path), f"http://{host}/image.png")
    assert "only fetches from public addresses" in message


def test_public_addresses_pass_the_check() -> None:
    assert is_public("93.184.216.34") and is_public("2606:4700::1111")
    assert not is_public("::ffff:10.0.0.1")


def test_a_name_resolving_to_any_private_address_is_refused(tmp_path: Path) -> None:
    images = fetcher(tmp_path, {"images.example": ["93.184.216.34", "10.0.0.7"], "localhost.example": ["127.0.0.1"]})
    assert "10.0.0.7" in refused(images, "https://images.example/cat.png")
    assert "127.0.0.1" in refused(images, "http://localhost.example:8080/cat.png")


def test_private_addresses_when_the_operator_allows_them(tmp_path: Path, server: str) -> None:
    image = asyncio.run(fetcher(tmp_path, allow_private=True).fetch(f"{server}/ok.png", ()))
    assert image.size == (40, 60) and image.mode == "RGB"


def test_redirects_are_followed_and_each_hop_checked(
    tmp_path: Path, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test server on 127.0.0.1 stands in for a public host; every other address is judged as usual.
    monkeypatch.setattr(remote_images, "is_public", lambda a: a == "127.0.0.1" or is_public(a))
    images = fetcher(tmp_path, {"internal.example": ["192.168.0.10"]})
    ok = asyncio.run(images.fetch(f"{server}/redirect?to={server}/ok.png", ()))
    assert ok.size == (40, 60)
    for target in ("http://169.254.169.254/latest/meta-data/", "http://internal.example/x.png", "file:///etc/passwd"):
        message = refused(images, f"{server}/redirect?to={target}")
        assert "public addresses" in message or "only http and https" in message
    assert "more than 5 redirects" in refused(images, f"{server}/loop")


def test_size_limit(tmp_path: Path, server: str) -> None:
    images = fetcher(tmp_path, allow_private=True, max_bytes=4000)
    assert "the limit is 4000" in refused(images, f"{server}/big.png")
    assert "over the limit of 4000 bytes" in refused(images, f"{server}/unsized.png")


def test_time_limit(tmp_path: Path, server: str) -> None:
    images = fetcher(tmp_path, allow_private=True, timeout_s=0.5)
    started = time.monotonic()
    assert "longer than 0.5 s" in refused(images, f"{server}/slow.png")
    assert time.monotonic() - started < 1.8


def test_content_must_be_an_image_of_bounded_size(tmp_path: Path, server: str) -> None:
    images = fetcher(tmp_path, allow_private=True, max_pixels=1_000_000)
    assert "not an image" in refused(images, f"{server}/text")
    assert "3000x3000, over the limit of 1000000 pixels" in refused(images, f"{server}/huge.png")
    assert "HTTP 404" in refused(images, f"{server}/missing.png")


def test_this_servers_own_urls_are_read_from_storage(tmp_path: Path) -> None:
    images = fetcher(tmp_path, {"testserver": ["10.0.0.1"], "elsewhere.example": ["10.0.0.2"]})
    images.storage.put("images/abc.png", solid_png(30, 20))
    own = ("http://testserver", "https://public.example/prefix")
    assert asyncio.run(images.fetch("http://testserver/files/images/abc.png", own)).size == (30, 20)
    assert asyncio.run(images.fetch("https://public.example/prefix/files/images/abc.png", own)).size == (30, 20)
    assert "no such file" in refused(images, "http://testserver/files/images/missing.png", own)
    assert "no such file" in refused(images, "http://testserver/files/%2e%2e/%2e%2e/etc/passwd", own)
    # Dot segments are resolved first, so this path is not under /files/ at all.
    assert "public addresses" in refused(images, "http://testserver/files/../../etc/passwd", own)
    # The same path on another host, scheme or port is someone else's URL: fetched (and here refused).
    for other in ("http://elsewhere.example/files/images/abc.png", "http://testserver:81/files/images/abc.png"):
        assert "public addresses" in refused(images, other, own)
