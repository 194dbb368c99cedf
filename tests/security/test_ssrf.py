"""Webhook addresses: every form that embeds a private IPv4 address in IPv6 is refused."""

from __future__ import annotations

import ipaddress

import pytest

from jobs.errors import InputError
from workers.webhooks import _forbidden, check_url

FORBIDDEN = [
    "127.0.0.1",
    "169.254.169.254",
    "10.0.0.1",
    "::1",
    "::ffff:127.0.0.1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::a00:1",  # local-use NAT64 /48
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of the metadata address
    "::127.0.0.1",  # IPv4-compatible
    "::169.254.169.254",
    "2001::1",  # Teredo
    "192.0.0.192",
    "192.0.0.8",
    "0.0.0.0",
    "::",
    "ff02::1",
    "224.0.0.1",
]
ALLOWED = ["8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_private_forms_are_forbidden(address: str) -> None:
    assert _forbidden(ipaddress.ip_address(address))
    with pytest.raises(InputError):
        check_url(f"http://[{address}]/hook" if ":" in address else f"http://{address}/hook")


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    assert not _forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1]:99999/", "http://host:port/", "gopher://x/"])
def test_malformed_urls_are_input_errors(url: str) -> None:
    with pytest.raises(InputError):
        check_url(url)
