"""Slow and stalled clients, oversized bodies: the API keeps answering everyone else."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx

from tests.fixtures.services import wait_until
from tests.security.conftest import LiveApi, read_status, stalled_upload

STALLED = 45  # more than anyio's default 40 worker threads


def test_stalled_uploads_do_not_freeze_the_api(live_api: Callable[..., LiveApi]) -> None:
    api = live_api(request_read_timeout_s=4.0, max_uploads=64, max_uploads_per_tenant=64)
    key = api.key("mallory")
    other = api.key("alice")
    socks = [stalled_upload(api, key) for _ in range(STALLED)]
    try:
        with httpx.Client(base_url=api.url, timeout=3.0) as client:
            # Within the stall (before any read timeout), probes and other tenants are answered.
            assert client.get("/healthz").status_code == 200
            listed = client.get("/v1/jobs", headers={"Authorization": f"Bearer {other}"})
            assert listed.status_code == 200
        # A client that sends nothing for the read timeout is cut with 408.
        for sock in socks[:3]:
            sock.settimeout(30)
            assert read_status(sock) == 408
    finally:
        for sock in socks:
            sock.close()
    assert not list(api.rt.storage.list("uploads/"))  # nothing half-written is left behind


def test_concurrent_uploads_are_capped_per_tenant_and_in_all(live_api: Callable[..., LiveApi]) -> None:
    api = live_api(request_read_timeout_s=20.0, max_uploads=3, max_uploads_per_tenant=2)
    mallory, eve, alice = api.key("mallory"), api.key("eve"), api.key("alice")
    socks = [stalled_upload(api, mallory) for _ in range(2)]
    try:
        socks.append(stalled_upload(api, eve))
        with httpx.Client(base_url=api.url, timeout=10.0) as client:
            wait_until(
                lambda: api.app.state.upload_slots.in_use() == len(socks), 10, "the stalled uploads' slots"
            )
            mine = client.post(
                "/v1/jobs", headers={"Authorization": f"Bearer {mallory}"}, files={"file": ("a.flac", b"x")}
            )
            assert mine.status_code == 429 and "PER_TENANT" in mine.text  # per tenant
            refused = client.post(
                "/v1/jobs",
                headers={"Authorization": f"Bearer {alice}"},
                files={"file": ("a.flac", b"x" * 10)},
            )
            assert refused.status_code == 429  # in all
            assert int(refused.headers["retry-after"]) >= 1
            assert client.get("/healthz").status_code == 200
    finally:
        for sock in socks:
            sock.close()


def test_a_json_body_over_the_limit_is_413_before_it_is_read(live_api: Callable[..., LiveApi]) -> None:
    api = live_api(max_json_kb=16)
    key = api.key("mallory")
    body = b'{"source": "' + b"a" * 200_000 + b'"}'
    with httpx.Client(base_url=api.url, timeout=10.0, headers={"Authorization": f"Bearer {key}"}) as client:
        answer = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 413
        # Without a Content-Length (chunked), the cap holds while reading.
        chunked = client.post(
            "/v1/jobs",
            content=iter([body[:10_000], body[10_000:]]),
            headers={"Content-Type": "application/json"},
        )
        assert chunked.status_code == 413


def test_a_client_that_sends_nothing_is_cut(live_api: Callable[..., LiveApi]) -> None:
    api = live_api(request_read_timeout_s=2.0)
    key = api.key("mallory")
    sock = socket.create_connection((api.host, api.port), timeout=20)
    sock.sendall(
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
    )
    assert read_status(sock) == 408
    sock.close()
