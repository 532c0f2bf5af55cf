"""is_public follows IANA's special-purpose address registries exactly, whatever the interpreter's
ipaddress module thinks (Python 3.11.7 calls 192.0.0.8 global)."""

from __future__ import annotations

import pytest

from daguerre.services.remote_images import is_public


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0",
        "0.1.2.3",
        "10.1.2.3",
        "100.64.0.1",  # shared address space
        "127.0.0.1",
        "169.254.169.254",  # cloud metadata
        "172.16.0.1",
        "192.0.0.1",  # IETF protocol assignments
        "192.0.0.8",  # IPv4 dummy address
        "192.0.0.11",
        "192.0.0.170",
        "192.0.0.171",
        "192.0.2.1",
        "192.88.99.1",
        "192.168.1.1",
        "198.18.0.1",  # benchmarking
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",  # multicast
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::127.0.0.1",  # deprecated IPv4-compatible
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::1",  # local-use translation
        "100::1",
        "2001::1",  # Teredo
        "2001:2::1",
        "2001:db8::1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
        "3fff::1",
        "5f00::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%eth0",
        "fec0::1",  # deprecated site-local
        "ff02::1",
    ],
)
def test_special_purpose_addresses_are_not_public(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "192.0.0.9",  # Port Control Protocol anycast: globally reachable inside 192.0.0.0/24
        "192.0.0.10",  # TURN anycast
        "192.31.196.1",  # AS112-v4
        "192.52.193.1",  # AMT
        "192.175.48.1",
        "100.63.255.255",  # just below the shared address space
        "100.128.0.0",  # just above it
        "198.17.255.255",
        "198.20.0.0",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8
        "2002:808:808::1",  # 6to4 of 8.8.8.8
        "2001:4860:4860::8888",
        "2001:1::1",  # PCP anycast inside the non-global 2001::/23
        "2001:3::1",
        "2001:20::1",
        "2620:4f:8000::1",
    ],
)
def test_globally_reachable_addresses_are_public(address: str) -> None:
    assert is_public(address)
