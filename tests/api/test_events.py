"""Live events through real API processes (uvicorn), workers, PostgreSQL and the stand-in vLLM: the
transcript arrives while the model still holds later answers, a client that reconnects to another
API replica with Last-Event-ID gets exactly what it missed, partial documents grow, and the limits
(open streams per tenant, a client that never reads) hold."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.captions import stamped
from jobs.models import Window
from jobs.options import JobOptions
from jobs.steps.create import create_job
from jobs.stitching import WindowResult
from tests.api.stack import METRICS_TOKEN, ApiStack
from tests.fixtures.services import VOXBATCH, free_port, wait_until
from tests.speech import build_recording, marker_talk

# Markers no other test's recording carries: the stand-in holds the answers to this job's audio.
LIVE_MARKERS = [171, 172, 173, 174, 175, 176, 177, 178]
HELD = 178  # in the recording's second minute: its second window


@pytest.fixture(scope="module")
def live_stack(stack_maker: Callable[..., ApiStack]) -> ApiStack:
    return stack_maker("live", VOXBATCH_MAX_EVENT_STREAMS_PER_TENANT="2", VOXBATCH_EVENTS_SEND_TIMEOUT_S="1")


def events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The events of an SSE response as they arrive."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "event" in fields:
                yield {"id": fields["id"], "event": fields["event"], "data": json.loads(fields["data"])}
            fields = {}
        elif not line.startswith(":") and ": " in line:
            name, value = line.split(": ", 1)
            fields[name] = value


def replica(stack: ApiStack, tmp: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """A second API process on the same database, storage and Redis (``env``: settings of its own)."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    with (tmp / "replica.log").open("wb") as out:
        proc = subprocess.Popen(
            [*VOXBATCH, "api", "--port", str(port)],
            env={**stack.cluster.env, **env}, cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (tmp / "replica.log").read_text()
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 60, "the replica to answer")
    return proc, url


def test_the_transcript_streams_while_the_job_runs_and_resumes_on_another_replica(
    live_stack: ApiStack, audio_dir: Path, tmp_path: Path
) -> None:
    recording = build_recording(marker_talk(LIVE_MARKERS), audio_dir / "live-talk.wav")
    live_stack.vllm.hold(frozenset({HELD}))
    proc, other = replica(live_stack, tmp_path)
    try:
        with live_stack.client("lena") as client:
            job = client.post(
                "/v1/jobs",
                data={"window_minutes": "1"},
                files={"file": ("live.wav", recording.path.read_bytes())},
            ).json()
            url = f"/v1/jobs/{job['id']}/events"
            seen: list[dict[str, Any]] = []
            with client.stream("GET", url, timeout=120) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                for event in events(stream):
                    seen.append(event)
                    if event["event"] == "window":
                        break  # the first window is done; the second waits for the model
            assert [e["data"]["status"] for e in seen if e["event"] == "status"][-1] != "succeeded"
            first = [e for e in seen if e["event"] == "segment"]
            assert first and all(e["data"]["window"] == 0 for e in first)
            # While the model holds an answer of the second window, the partial document shows
            # the first.
            partial = client.get(f"/v1/jobs/{job['id']}/documents/document.json?partial=true").json()
            assert partial["partial"] is True
            assert [s["text"] for s in partial["segments"]][: len(first)] == [
                e["data"]["text"] for e in first
            ]
            assert client.get(f"/v1/jobs/{job['id']}/documents/document.json").status_code == 409
        # Another replica, with the id of the last event seen: exactly what was missed.
        live_stack.vllm.release()
        with httpx.Client(
            base_url=other, headers={"Authorization": f"Bearer {live_stack.key('lena')}"}
        ) as c2:
            rest: list[dict[str, Any]] = []
            with c2.stream("GET", url, headers={"Last-Event-ID": seen[-1]["id"]}, timeout=120) as stream:
                rest = list(events(stream))  # the stream ends after the document event
            assert rest[-1]["event"] == "document"
            with c2.stream("GET", url, timeout=60) as stream:
                replay = list(events(stream))

        # Nothing missed, nothing twice, in the same order as a replay of the finished job (ids differ
        # only in the status part: window and position are the same).
        def content(stream: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
            return [(e["event"], ":".join(e["id"].split(":")[:2]), e["data"])
                    for e in stream if e["event"] != "status"]  # fmt: skip

        assert content(seen + rest) == content(replay)
        said = [e["data"]["text"] for e in replay if e["event"] == "segment"]
        assert [m for t in said for m in t.split() if m.startswith("marker-")] == [
            f"marker-{k}" for k in LIVE_MARKERS
        ]
        assert [e["data"]["index"] for e in replay if e["event"] == "window"] == [0, 1]
    finally:
        live_stack.vllm.release()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def _metric(stack: ApiStack, name: str) -> float:
    text = httpx.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[-1])


def test_open_streams_per_tenant_are_limited(live_stack: ApiStack) -> None:
    rt = live_stack.cluster.runtime()
    job = create_job(rt, "quiet.wav", JobOptions(), tenant="otto")  # never runs: its streams stay open
    url = f"/v1/jobs/{job.id}/events"
    with live_stack.client("otto") as client, live_stack.client("olga") as other:
        with client.stream("GET", url) as one, client.stream("GET", url) as two:
            assert one.status_code == two.status_code == 200
            refused = client.get(url)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert "VOXBATCH_MAX_EVENT_STREAMS_PER_TENANT" in refused.json()["detail"]
            assert other.get(url).status_code == 404  # another tenant: not its job, not its limit
        # Closed streams give their slots back.
        wait_until(
            lambda: _metric(live_stack, "voxbatch_event_streams_open") == 0, 30, "the closed streams to end"
        )
        with client.stream("GET", url) as again:
            assert again.status_code == 200


def test_the_stream_limit_holds_across_api_processes_and_a_killed_ones_streams_expire(
    live_stack: ApiStack, tmp_path: Path
) -> None:
    import redis

    rt = live_stack.cluster.runtime()
    job = create_job(rt, "quiet.wav", JobOptions(), tenant="fleet")  # never runs: its streams stay open
    url = f"/v1/jobs/{job.id}/events"
    lease = {"VOXBATCH_EVENT_STREAMS_LEASE_S": "1.5"}  # limit 2 (live_stack)
    a, a_url = replica(live_stack, tmp_path / "a", **lease)
    b, b_url = replica(live_stack, tmp_path / "b", **lease)
    counted = redis.Redis.from_url(live_stack.cluster.env["VOXBATCH_BROKER_URL"])
    auth = {"Authorization": f"Bearer {live_stack.key('fleet')}"}
    try:
        with (
            httpx.Client(base_url=a_url, headers=auth, timeout=30) as on_a,
            httpx.Client(base_url=b_url, headers=auth, timeout=30) as on_b,
            contextlib.ExitStack() as streams,
        ):
            assert streams.enter_context(on_a.stream("GET", url)).status_code == 200
            assert streams.enter_context(on_b.stream("GET", url)).status_code == 200
            # One stream in each process, two in the fleet: both processes refuse a third.
            for client in (on_a, on_b):
                # A stream that is not refused never ends: look at its status only.
                with client.stream("GET", url) as refused:
                    assert refused.status_code == 429
                    assert "VOXBATCH_MAX_EVENT_STREAMS_PER_TENANT" in refused.read().decode()
            # Both processes renew their streams' leases (each member's expiry moves on).
            first = dict(counted.zrange("voxbatch:event-streams:fleet", 0, -1, withscores=True))
            assert len(first) == 2
            wait_until(
                lambda: all(
                    score > first[member]
                    for member, score in counted.zrange(
                        "voxbatch:event-streams:fleet", 0, -1, withscores=True
                    )
                ),
                30,
                "both leases to be renewed",
            )
            # A killed process renews nothing: its stream stops counting when its lease ends, and
            # the other process takes the slot.
            a.kill()
            a.wait(15)

            def taken() -> bool:
                answer = streams.enter_context(on_b.stream("GET", url))
                if answer.status_code == 200:
                    return True
                answer.read()
                assert answer.status_code == 429, answer.text
                return False

            wait_until(taken, 30, "the killed process's stream to stop counting", poll_s=0.3)
            # B's first stream (renewed past its lease) and the new one: the limit holds again.
            with on_b.stream("GET", url) as refused:
                assert refused.status_code == 429
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)


def test_a_client_that_never_reads_is_cut(live_stack: ApiStack) -> None:
    # A job whose replay is far larger than any socket buffer: ~12 MB of transcript.
    rt = live_stack.cluster.runtime()
    job = create_job(rt, "big.wav", JobOptions(), tenant="sloth")
    rt.store.add_window(Window(job_id=job.id, index=0, start_s=0.0, end_s=1800.0))
    (window,) = rt.store.windows(job.id)
    text = "word " * 1200
    segments = [
        {"index": k, "start_s": 0.9 * k, "end_s": 0.9 * k + 0.8, "text": text, "speech": []}
        for k in range(2000)
    ]
    result = WindowResult(0, 0.0, 1800.0, "", None, segments=segments)
    rt.storage.put_bytes(window.result_key, result.to_json())
    rt.store.finish_window(window.id, 1.0)
    key = live_stack.key("sloth")
    cut = _metric(live_stack, "voxbatch_event_streams_cut_total")
    host, port = live_stack.url.removeprefix("http://").split(":")
    sloth = socket.socket()
    sloth.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sloth.connect((host, int(port)))
    try:
        head = f"GET /v1/jobs/{job.id}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}"
        sloth.sendall(f"{head}\r\n\r\n".encode())
        # It reads nothing: once one event has waited VOXBATCH_EVENTS_SEND_TIMEOUT_S, the stream ends.
        wait_until(lambda: _metric(live_stack, "voxbatch_event_streams_cut_total") > cut, 60, "the cut")
        assert _metric(live_stack, "voxbatch_event_streams_open") == 0
        received = bytearray()
        sloth.settimeout(30)
        while chunk := sloth.recv(1 << 16):
            received += chunk
        # What was buffered, then the end of the connection: far less than the replay, and no
        # last chunk of a finished response.
        assert b"event: segment" in received
        assert len(received) < len(text) * 2000 // 2
        assert not received.endswith(b"0\r\n\r\n")
    finally:
        sloth.close()


def test_wait_follow_prints_segments_as_they_come_then_the_documents_path(
    live_stack: ApiStack, audio_dir: Path, tmp_path: Path
) -> None:
    recording = build_recording(marker_talk(LIVE_MARKERS), audio_dir / "live-talk.wav")
    live_stack.vllm.hold(frozenset({HELD}))
    try:
        job_id = live_stack.cluster.submit(recording.path, "--window-minutes", "1")
        args = ["wait", job_id, "--follow", "--timeout", "120", "--output-dir", str(tmp_path / "out")]
        proc = subprocess.Popen(
            [*VOXBATCH, *args], env=live_stack.cluster.env, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
        reader.start()
        wait_until(lambda: any("marker-171" in line for line in lines), 120, "the first segment printed")
        assert proc.poll() is None  # the job cannot end while the model holds an answer
    finally:
        live_stack.vllm.release()
    assert proc.wait(timeout=150) == 0, proc.stderr.read() if proc.stderr else ""
    reader.join(timeout=10)
    assert lines[-1].strip() == str((tmp_path / "out" / "document.md").absolute())
    doc = json.loads((tmp_path / "out" / "document.json").read_text())
    assert [line.rstrip("\n") for line in lines[:-1]] == [
        stamped(s["start_s"], s["text"]) for s in doc["segments"]
    ]
