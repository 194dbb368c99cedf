"""Webhooks: the allow-list, and signed deliveries with retries to a real local receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from jobs.errors import InputError
from jobs.models import Tenant
from tests.api.stack import ApiStack
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


class Receiver:
    """Answers 500 to the first ``failures`` POSTs, then 200; keeps every request."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                code = 500 if len(receiver.requests) < receiver.failures else 200
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/voxbatch?x=1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.server.shutdown()


def _secret(stack: ApiStack, tenant: str) -> str:
    rt = stack.cluster.runtime()
    with rt.db.session() as s:
        return s.exec(select(Tenant).where(Tenant.name == tenant)).one().webhook_secret


def test_webhook_is_signed_and_retried_until_it_lands(
    local_stack: ApiStack, short_speech: Path, receiver: Receiver
) -> None:
    from tests.fixtures.services import wait_until

    with local_stack.client("alice") as client:
        r = client.post(
            "/v1/jobs",
            data={"webhook_url": receiver.url},
            files={"file": ("hooked.wav", short_speech.read_bytes())},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert local_stack.wait_finished(client, job_id)["status"] == "succeeded"
        wait_until(lambda: len(receiver.requests) >= 3, 30, "three webhook deliveries")
        final = wait_until(
            lambda: (
                (j := client.get(f"/v1/jobs/{job_id}").json())
                and any(a["status"] == "delivered" for a in j["webhook_attempts"])
                and j
            ),
            30,
            "the delivery to be recorded",
        )
    secret = _secret(local_stack, "alice")
    assert [code for _, _, code in receiver.requests] == [500, 500, 200]
    for headers, body, _ in receiver.requests:
        assert webhooks.verify(secret, body, headers["x-voxbatch-signature"])
        payload = json.loads(body)
        assert payload["event"] == "job.finished"
        assert str(payload["timestamp"]) == headers["x-voxbatch-timestamp"]
        assert payload["job"]["id"] == job_id and payload["job"]["status"] == "succeeded"
        assert "webhook_attempts" not in payload["job"] and "source_key" not in payload["job"]
    attempts = [a for a in final["webhook_attempts"] if a["status"] != "queued"]
    assert [(a["delivery"], a["status"], a["status_code"]) for a in attempts] == [
        (1, "failed", 500),
        (2, "failed", 500),
        (3, "delivered", 200),
    ]


def test_cancel_sends_one_webhook(local_stack: ApiStack, short_speech: Path) -> None:
    from tests.fixtures.services import wait_until

    hook = Receiver(failures=0)
    try:
        with local_stack.client("bob") as client:
            r = client.post(
                "/v1/jobs",
                data={"webhook_url": hook.url},
                files={"file": ("c.wav", short_speech.read_bytes())},
            )
            job_id = r.json()["id"]
            client.post(f"/v1/jobs/{job_id}/cancel")
            client.post(f"/v1/jobs/{job_id}/cancel")
            wait_until(lambda: hook.requests, 30, "the cancellation webhook")
            final = client.get(f"/v1/jobs/{job_id}").json()["status"]
        body = json.loads(hook.requests[0][1])
        # A warm worker may finish the 5-s job before the cancel lands: then it reports success.
        assert body["job"]["status"] == final and final in ("cancelled", "succeeded")
        assert webhooks.verify(
            _secret(local_stack, "bob"), hook.requests[0][1], hook.requests[0][0]["x-voxbatch-signature"]
        )
        import time

        time.sleep(1.5)
        assert len(hook.requests) == 1
    finally:
        hook.server.shutdown()
