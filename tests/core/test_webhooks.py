"""Webhooks' pure parts: the address allow-list and the signature (deliveries: tests/api)."""

from __future__ import annotations

import pytest

from jobs.errors import InputError
from workers import webhooks


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://192.168.0.1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/x",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://[fd00:ec2::254]/x",
        "http://0.0.0.0/x",
        "http://224.0.0.1/x",
    ],
)
def test_private_and_metadata_addresses_are_refused(url: str) -> None:
    with pytest.raises(InputError, match="private or reserved"):
        webhooks.check_url(url)
    assert webhooks.check_url(url, allow_private=True)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "http:///nohost", "gopher://x/"])
def test_only_http_urls_with_hosts(url: str) -> None:
    with pytest.raises(InputError):
        webhooks.check_url(url, allow_private=True)


def test_public_address_passes() -> None:
    assert [str(a) for a in webhooks.check_url("https://93.184.215.14/hook")] == ["93.184.215.14"]


def test_signature_covers_the_body() -> None:
    sig = webhooks.sign("s3cret", b'{"a":1}')
    assert sig.startswith("sha256=") and webhooks.verify("s3cret", b'{"a":1}', sig)
    assert not webhooks.verify("s3cret", b'{"a":2}', sig)
    assert not webhooks.verify("other", b'{"a":1}', sig)
