"""Reading an image a request names by URL, without letting the URL reach into the server's
network (SSRF).

A URL this server issued (`<its base>/files/<key>`) is read straight from storage. Any other URL
must be http(s), and every address its host resolves to must be public by IANA's special-purpose
address registries (`is_public`), also inside IPv4-mapped, NAT64 and 6to4 IPv6 addresses.
The connection goes to the vetted address itself (the host name travels in the Host header and
TLS SNI), so a DNS answer that changes between the check and the connection (rebinding) cannot
redirect it. Redirects are followed one hop at a time and each hop is checked the same way. The
whole fetch has a time limit and a size limit, and the bytes must decode as an image of a bounded
pixel count. Every refusal is an InvalidParameter naming image_url, raised before anything is
charged.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import warnings
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import unquote

import anyio
import httpx
from anyio import to_thread
from PIL import Image, ImageOps, UnidentifiedImageError

from daguerre.errors import InvalidParameter, NotFound
from daguerre.services.storage import Storage
from daguerre.settings import RemoteImageSettings

FIELD = "image_url"
_REDIRECTS = (301, 302, 303, 307, 308)

Resolver = Callable[[str, int], Awaitable[list[str]]]


def refuse(url: object, why: str) -> InvalidParameter:
    return InvalidParameter(FIELD, f"invalid {FIELD} {str(url)!r}: {why}")


async def resolve(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# IANA's IPv4 and IPv6 Special-Purpose Address Registries
# (iana.org/assignments/iana-ipv4-special-registry, .../iana-ipv6-special-registry), as data:
# each block and its "Globally Reachable" column. The interpreter's is_global is not enough: its
# table varies with the Python release (3.11.7 calls 192.0.0.8, the IPv4 dummy address, global)
# and it ignores the registry's exceptions the other way (192.0.0.9 and 192.0.0.10 are anycast
# services inside the non-global 192.0.0.0/24). An address is public when the most specific block
# holding it is globally reachable, or no block holds it. Blocks the registry marks "N/A"
# (6to4 relay anycast, Teredo) are treated as not reachable.
_IPV4_SPECIAL: tuple[tuple[str, bool], ...] = (
    ("0.0.0.0/8", False),  # "this network"
    ("10.0.0.0/8", False),  # private use
    ("100.64.0.0/10", False),  # shared address space (carrier-grade NAT)
    ("127.0.0.0/8", False),  # loopback
    ("169.254.0.0/16", False),  # link local
    ("172.16.0.0/12", False),  # private use
    ("192.0.0.0/24", False),  # IETF protocol assignments
    ("192.0.0.0/29", False),  # IPv4 service continuity prefix
    ("192.0.0.8/32", False),  # IPv4 dummy address
    ("192.0.0.9/32", True),  # Port Control Protocol anycast
    ("192.0.0.10/32", True),  # TURN anycast
    ("192.0.0.170/31", False),  # NAT64/DNS64 discovery (.170 and .171)
    ("192.0.2.0/24", False),  # documentation (TEST-NET-1)
    ("192.31.196.0/24", True),  # AS112-v4
    ("192.52.193.0/24", True),  # AMT
    ("192.88.99.0/24", False),  # deprecated 6to4 relay anycast ("N/A")
    ("192.168.0.0/16", False),  # private use
    ("192.175.48.0/24", True),  # direct delegation AS112 service
    ("198.18.0.0/15", False),  # benchmarking
    ("198.51.100.0/24", False),  # documentation (TEST-NET-2)
    ("203.0.113.0/24", False),  # documentation (TEST-NET-3)
    ("240.0.0.0/4", False),  # reserved
    ("255.255.255.255/32", False),  # limited broadcast
    # Not special-purpose but never a server to fetch from: multicast (IANA's IPv4 multicast registry).
    ("224.0.0.0/4", False),
)
_IPV6_SPECIAL: tuple[tuple[str, bool], ...] = (
    ("::/128", False),  # unspecified
    ("::1/128", False),  # loopback
    ("64:ff9b:1::/48", False),  # IPv4-IPv6 translation, local use
    ("100::/64", False),  # discard-only
    ("100:0:0:1::/64", False),  # dummy IPv6 prefix
    ("2001::/23", False),  # IETF protocol assignments
    ("2001::/32", False),  # Teredo ("N/A")
    ("2001:1::1/128", True),  # Port Control Protocol anycast
    ("2001:1::2/128", True),  # TURN anycast
    ("2001:1::3/128", True),  # DNS-SD service registration protocol anycast
    ("2001:2::/48", False),  # benchmarking
    ("2001:3::/32", True),  # AMT
    ("2001:4:112::/48", True),  # AS112-v6
    ("2001:10::/28", False),  # deprecated ORCHID
    ("2001:20::/28", True),  # ORCHIDv2
    ("2001:30::/28", True),  # drone remote ID entity tags
    ("2001:db8::/32", False),  # documentation
    ("2620:4f:8000::/48", True),  # direct delegation AS112 service
    ("3fff::/20", False),  # documentation
    ("5f00::/16", False),  # segment routing SIDs
    ("fc00::/7", False),  # unique local
    ("fe80::/10", False),  # link-local unicast
)
# IANA's IPv6 address space registry: only 2000::/3 is global unicast; the rest is reserved,
# unique-local, link-local or multicast. Forms carrying an IPv4 address are judged by that address.
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SPECIAL: tuple[tuple[_Network, bool], ...] = tuple(
    (ipaddress.ip_network(block), reachable) for block, reachable in (*_IPV4_SPECIAL, *_IPV6_SPECIAL)
)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour


def is_public(address: str) -> bool:
    """Whether `address` is globally reachable by IANA's special-purpose registries."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public(str(embedded))
        if ip not in _IPV6_GLOBAL_UNICAST:
            return False
    holding = [(network.prefixlen, reachable) for network, reachable in _SPECIAL if ip in network]
    return max(holding)[1] if holding else True


def blocked_address(addresses: Iterable[str], allowed: Callable[[str], bool] | None = None) -> str | None:
    """The first of `addresses` that is neither public nor `allowed` by the operator; None when
    every one may be connected to. A name is refused when any of its addresses is: the client
    library could pick any of them."""
    for address in addresses:
        if not is_public(address) and not (allowed is not None and allowed(address)):
            return address
    return None


def vetted_request(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    address: str,
    headers: dict[str, str],
    content: bytes | None = None,
) -> httpx.Request:
    """A request for `url` whose connection goes to `address`, the one that was checked, while the
    host name travels in the Host header and the TLS SNI (and the certificate is verified against
    it). A DNS answer that changes after the check (rebinding) cannot move the connection.
    Send it with a client of its own (connections are pooled by the vetted address, and one opened
    for another host's TLS name must not be reused) that does not follow redirects."""
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return client.build_request(
        method,
        url.copy_with(host=address),
        headers={"Host": url.netloc.decode("ascii"), **headers},
        content=content,
        extensions=extensions,
    )


class RemoteImages:
    def __init__(self, settings: RemoteImageSettings, storage: Storage, resolver: Resolver = resolve) -> None:
        self.settings = settings
        self.storage = storage
        self.resolver = resolver

    async def fetch(self, url: str, own_bases: Iterable[str]) -> Image.Image:
        """The image at `url`, upright (EXIF orientation applied) and in RGB."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise refuse(url, f"not a URL ({exc})") from None
        key = self._own_key(parsed, own_bases)
        if key is not None:
            try:
                data = await to_thread.run_sync(self.storage.get, key)
            except NotFound:
                raise refuse(url, "no such file on this server") from None
        else:
            data = await self._download(parsed)
        return await to_thread.run_sync(self._decode, url, data)

    @staticmethod
    def _own_key(url: httpx.URL, own_bases: Iterable[str]) -> str | None:
        for base in own_bases:
            own = httpx.URL(base)
            prefix = own.path.rstrip("/") + "/files/"
            if (url.scheme, url.host, url.port) == (own.scheme, own.host, own.port) and url.path.startswith(prefix):
                return unquote(url.path[len(prefix) :])
        return None

    async def _download(self, url: httpx.URL) -> bytes:
        limit = self.settings.timeout_s
        try:
            with anyio.fail_after(limit):
                for _ in range(self.settings.max_redirects + 1):
                    response_or_data = await self._hop(url)
                    if isinstance(response_or_data, bytes):
                        return response_or_data
                    url = response_or_data
        except TimeoutError:
            raise refuse(url, f"the download took longer than {limit:g} s") from None
        raise refuse(url, f"more than {self.settings.max_redirects} redirects")

    async def _hop(self, url: httpx.URL) -> bytes | httpx.URL:
        """Fetch one URL: its bytes, or where it redirects to."""
        if url.scheme not in ("http", "https"):
            raise refuse(url, "only http and https URLs are fetched")
        if not url.host:
            raise refuse(url, "the URL has no host")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await self.resolver(url.host, port)
        except OSError as exc:
            raise refuse(url, f"cannot resolve {url.host} ({exc})") from None
        if not addresses:
            raise refuse(url, f"cannot resolve {url.host}")
        blocked = None if self.settings.allow_private else blocked_address(addresses)
        if blocked is not None:
            raise refuse(
                url,
                f"{url.host} is at {blocked}, a private, loopback, link-local or reserved address; "
                "this server only fetches from public addresses",
            )
        max_bytes = self.settings.max_bytes
        try:
            # A client per hop: connections are keyed by the vetted address, and a pooled one
            # opened for another host's TLS name must not be reused.
            async with httpx.AsyncClient(
                trust_env=False, follow_redirects=False, timeout=self.settings.timeout_s
            ) as client:
                request = vetted_request(client, "GET", url, addresses[0], {"Accept": "image/*"})
                response = await client.send(request, stream=True)
                try:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise refuse(url, f"HTTP {response.status_code} without a Location")
                        return url.join(location)
                    if response.status_code != 200:
                        raise refuse(url, f"the server answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > max_bytes:
                        raise refuse(url, f"the image is {declared} bytes; the limit is {max_bytes}")
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > max_bytes:
                            raise refuse(url, f"the image is over the limit of {max_bytes} bytes")
                    return bytes(data)
                finally:
                    await response.aclose()
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise refuse(url, f"the download failed ({type(exc).__name__}: {exc})") from None

    def _decode(self, url: str, data: bytes) -> Image.Image:
        try:
            with warnings.catch_warnings():
                # Our own pixel limit below decides; Pillow's warning would only add noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > self.settings.max_pixels:
                    raise refuse(
                        url, f"the image is {width}x{height}, over the limit of {self.settings.max_pixels} pixels"
                    )
                image.load()
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
            raise refuse(url, "the content is not an image this server can read (PNG, JPEG, WebP, ...)") from None
        return ImageOps.exif_transpose(image).convert("RGB")
