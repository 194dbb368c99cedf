"""Webhooks: signed deliveries with retries to a real local receiver (the allow-list and the
signature alone: tests/core/test_webhooks.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from jobs.models import Tenant
from tests.api.stack import ApiStack
from tests.speech import Marker, Silence, Speech, build_recording
from workers import webhooks
from workers.dispatch import queue_depths


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
    # One event, delivered three times: the same event id and the same bytes each time (the chaos
    # soak found a timestamp per delivery and no id, so a receiver could not deduplicate).
    assert len({body for _, body, _ in receiver.requests}) == 1
    assert {h["x-voxbatch-event-id"] for h, _, _ in receiver.requests} == {
        webhooks.event_id(job_id, "succeeded", 0)
    }
    assert json.loads(receiver.requests[0][1])["id"] == webhooks.event_id(job_id, "succeeded", 0)
    attempts = [a for a in final["webhook_attempts"] if a["status"] != "queued"]
    assert [(a["delivery"], a["status"], a["status_code"]) for a in attempts] == [
        (1, "failed", 500),
        (2, "failed", 500),
        (3, "delivered", 200),
    ]


# A marker no other test's recording carries: the stand-in holds the answers to this job's audio.
HELD_MARKER = 190


def test_cancel_sends_one_webhook(local_stack: ApiStack, audio_dir: Path) -> None:
    from tests.fixtures.services import wait_until

    recording = build_recording(
        [Speech("A job that is cancelled."), Silence(0.8), Marker(HELD_MARKER), Silence(0.8)],
        audio_dir / "cancelled.wav",
    )
    hook = Receiver(failures=0)
    local_stack.vllm.hold(frozenset({HELD_MARKER}))
    try:
        with local_stack.client("bob") as client:
            held_before = local_stack.vllm.stats()["held"]
            r = client.post(
                "/v1/jobs",
                data={"webhook_url": hook.url},
                files={"file": ("c.wav", recording.path.read_bytes())},
            )
            job_id = r.json()["id"]
            # The job's audio has reached the model, which does not answer: it cannot succeed now.
            wait_until(lambda: local_stack.vllm.stats()["held"] > held_before, 60, "the job's audio held")
            client.post(f"/v1/jobs/{job_id}/cancel")
            client.post(f"/v1/jobs/{job_id}/cancel")
            wait_until(lambda: hook.requests, 30, "the cancellation webhook")
            final = client.get(f"/v1/jobs/{job_id}").json()["status"]
            assert final == "cancelled"
            body = json.loads(hook.requests[0][1])
            assert body["job"]["status"] == final and final in ("cancelled", "succeeded")
            assert webhooks.verify(
                _secret(local_stack, "bob"), hook.requests[0][1], hook.requests[0][0]["x-voxbatch-signature"]
            )
            # Let the model answer; once the worker has let go of the window and no message of the
            # job is left in the broker, nothing can end the job a second time.
            local_stack.vllm.release()
            rt = local_stack.cluster.runtime()
            broker = local_stack.cluster.env["VOXBATCH_BROKER_URL"]
            wait_until(
                lambda: (
                    local_stack.vllm.stats()["holding"] == 0
                    and not rt.store.has_running_window(job_id)
                    and not any(queue_depths(broker).values())
                ),
                60,
                "the worker to let go of the cancelled job",
            )
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        assert len(hook.requests) == 1
    finally:
        local_stack.vllm.release()
        hook.server.shutdown()


def test_window_done_webhooks_carry_stable_event_ids(
    local_stack: ApiStack, marker_recording: Path, audio_dir: Path
) -> None:
    from tests.fixtures.services import wait_until

    hook = Receiver(failures=1)  # the first delivery fails: its retry carries the same event id
    try:
        with local_stack.client("wendy") as client:
            bad = client.post(
                "/v1/jobs",
                data={"webhook_url": hook.url, "webhook_events": "window.done,job.started"},
                files={"file": ("w.wav", b"RIFF")},
            )
            assert bad.status_code == 422 and "job.started" in bad.json()["detail"]
            r = client.post(
                "/v1/jobs",
                data={
                    "webhook_url": hook.url,
                    "webhook_events": "window.done, job.done",
                    "window_minutes": "1",
                },
                files={"file": ("windows.wav", marker_recording.path.read_bytes())},  # type: ignore[attr-defined]
            )
            assert r.status_code == 202, r.text
            job = r.json()
            assert job["webhook_events"] == ["window.done", "job.done"]
            final = local_stack.wait_finished(client, job["id"])
            total = final["progress"]["windows_total"]
            assert final["status"] == "succeeded" and total >= 2
            # One delivery per window and one for the job, plus the failed first one again.
            wait_until(lambda: len([c for *_, c in hook.requests if c == 200]) >= total + 1, 30, "deliveries")
        secret = _secret(local_stack, "wendy")
        delivered: dict[str, dict[str, Any]] = {}
        ids = []
        for headers, body, code in hook.requests:
            assert webhooks.verify(secret, body, headers["x-voxbatch-signature"])
            payload = json.loads(body)
            assert payload["id"] == headers["x-voxbatch-event-id"]
            assert payload["event"] == headers["x-voxbatch-event"]
            ids.append(payload["id"])
            if code == 200:
                delivered[payload["id"]] = payload
        assert hook.requests[0][2] == 500 and ids.count(ids[0]) == 2  # its retry is the same event
        windows = sorted(p["window"]["index"] for p in delivered.values() if p["event"] == "window.done")
        assert windows == list(range(total))
        assert all(p["window"]["transcript"] for p in delivered.values() if p["event"] == "window.done")
        assert [p["job"]["status"] for p in delivered.values() if p["event"] == "job.finished"] == [
            "succeeded"
        ]
        assert len(delivered) == total + 1  # each event delivered once
    finally:
        hook.server.shutdown()
