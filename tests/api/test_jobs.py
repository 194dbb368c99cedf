"""The API process against real workers, Redis, PostgreSQL and the stand-in vLLM (local storage)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from jobs.documents import DOCUMENT_NAMES
from tests.api.stack import METRICS_TOKEN, ApiStack
from tests.documents import markers_in
from tests.speech import Recording


def _auth(client: httpx.Client) -> str:
    return f"Authorization: {client.headers['Authorization']}\r\n"


def test_curl_upload_runs_to_a_document(local_stack: ApiStack, marker_recording: Recording) -> None:
    key = local_stack.key("alice")
    done = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {key}",
         "-F", "preset=lecture", "-F", "instructions=List the markers.",
         "-F", f"file=@{marker_recording.path}", f"{local_stack.url}/v1/jobs"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    body, code = done.stdout.rsplit("\n", 1)
    assert code == "202", body
    job = json.loads(body)
    assert job["status"] == "queued" and job["preset"] == "lecture"
    assert job["instructions"] == "List the markers."
    assert job["source_name"] == marker_recording.path.name
    with local_stack.client("alice") as client:
        final = local_stack.wait_finished(client, job["id"])
        assert final["status"] == "succeeded", final["error"]
        assert final["progress"]["windows_done"] == final["progress"]["windows_total"] >= 1
        assert final["timings_s"]["total"] > 0
        assert set(final["links"]["documents"]) == set(DOCUMENT_NAMES)
        assert {"transcript.srt", "transcript.vtt"} <= set(DOCUMENT_NAMES)
        assert final["links"]["flower"].endswith(f"/api/tasks?search={job['id']}")
        doc = client.get(final["links"]["documents"]["document.json"]).json()
        assert markers_in(doc["transcript"]) == [m.k for m in marker_recording.markers]
        md = client.get(f"/v1/jobs/{job['id']}/documents/document.md")
        assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
        assert "marker-0" in md.text
        txt = client.get(f"/v1/jobs/{job['id']}/documents/transcript.txt")
        assert markers_in(txt.text) == [m.k for m in marker_recording.markers]


def test_python_upload_streams_fields_after_the_file(local_stack: ApiStack, short_speech: Path) -> None:
    with local_stack.client("alice") as client, short_speech.open("rb") as f:
        # httpx puts data fields first; send the file first by hand to exercise the late fields.
        boundary = "voxbatch-test-boundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="talk.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        tail = (f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
                f"--{boundary}--\r\n").encode()  # fmt: skip
        body = head + f.read() + tail
        r = client.post(
            "/v1/jobs", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        assert r.status_code == 202, r.text
        assert r.json()["language"] == "en"
        assert local_stack.wait_finished(client, r.json()["id"])["status"] == "succeeded"


def test_every_v1_call_needs_a_valid_key(local_stack: ApiStack) -> None:
    with local_stack.client(None) as anonymous:
        for method, path in [("GET", "/v1/jobs"), ("GET", "/v1/jobs/abc"), ("POST", "/v1/jobs"),
                             ("POST", "/v1/jobs/abc/cancel"), ("POST", "/v1/jobs/abc/retry"),
                             ("GET", "/v1/jobs/abc/documents/document.md"),
                             ("POST", "/v1/uploads")]:  # fmt: skip
            assert anonymous.request(method, path).status_code == 401, path
            bad = {"Authorization": "Bearer vbk_0000_not-a-key"}
            assert anonymous.request(method, path, headers=bad).status_code == 401, path
        assert anonymous.get("/healthz").status_code == 200


def test_not_audio_is_refused_by_content_not_extension(
    local_stack: ApiStack, tmp_path: Path, short_speech: Path
) -> None:
    fake = tmp_path / "fake-talk.mp3"
    fake.write_bytes(b"this is a text file pretending to be an mp3\n" * 100)
    with local_stack.client("alice") as client:
        before = client.get("/v1/jobs").json()["total"]
        r = client.post("/v1/jobs", files={"file": ("fake-talk.mp3", fake.read_bytes())})
        assert r.status_code == 422
        assert "fake-talk.mp3 is not an audio or video file" in r.json()["detail"]
        assert client.get("/v1/jobs").json()["total"] == before
        # A real recording under a misleading name is fine.
        r = client.post("/v1/jobs", files={"file": ("notes.txt", short_speech.read_bytes())})
        assert r.status_code == 202, r.text
        client.post(f"/v1/jobs/{r.json()['id']}/cancel")
    leftovers = list((local_stack.cluster.tmp / "data" / "store" / "uploads").rglob("fake*"))
    assert leftovers == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"preset": "sonnet"}, "preset"),
        ({"language": "xx-nope"}, "language"),
        ({"window_minutes": "45"}, "window"),
        ({"window_minutes": "soon"}, "window_minutes"),
        ({"webhook_url": "ftp://example.com/x"}, "http"),
    ],
)
def test_bad_options_are_422(
    local_stack: ApiStack, short_speech: Path, fields: dict[str, str], message: str
) -> None:
    with local_stack.client("alice") as client:
        r = client.post("/v1/jobs", data=fields, files={"file": ("a.wav", short_speech.read_bytes())})
        assert r.status_code == 422, r.text
        assert message in r.json()["detail"]


def test_over_the_size_limit_is_413(local_stack: ApiStack) -> None:
    limit = 50 * 1024 * 1024  # VOXBATCH_MAX_UPLOAD_MB of the local stack
    with local_stack.client("alice") as client:
        # Refused on the declared length, before a byte of the body is read.
        host, port = local_stack.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                (
                    f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\n{_auth(client)}"
                    "Content-Type: multipart/form-data; boundary=b\r\n"
                    f"Content-Length: {2 * limit}\r\n\r\n"
                ).encode()
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 413")

        def body() -> object:
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
            chunk = b"\0" * (1 << 20)
            for _ in range(limit // len(chunk) + 2):
                yield chunk
            yield b"\r\n--b--\r\n"

        streamed = client.post(
            "/v1/jobs", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
        assert streamed.status_code == 413
        assert "upload limit" in streamed.json()["detail"]
    assert list((local_stack.cluster.tmp / "data" / "store" / "uploads").rglob("big*")) == []


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd.wav",
        "..\\..\\windows.wav",
        "tab\there\x00\x1b[31m.wav",
        "Vortrag über Ökonomie 会议.wav",
    ],
)
def test_hostile_and_unicode_names_are_stored_safely(
    local_stack: ApiStack, short_speech: Path, name: str
) -> None:
    store = local_stack.cluster.tmp / "data" / "store"
    with local_stack.client("alice") as client:
        r = client.post("/v1/jobs", files={"file": (name, short_speech.read_bytes())})
        assert r.status_code == 202, r.text
        job = r.json()
        shown = job["source_name"]
        assert "/" not in shown and "\\" not in shown and not any(ord(c) < 32 for c in shown)
        assert shown.endswith(".wav")
        client.post(f"/v1/jobs/{job['id']}/cancel")
    for path in store.rglob("*"):
        assert path.resolve().is_relative_to(store.resolve())
        assert path.name.isascii()
    assert not (store.parent / "etc").exists()


def test_tenants_see_only_their_own_jobs(local_stack: ApiStack, short_speech: Path) -> None:
    with local_stack.client("alice") as alice, local_stack.client("bob") as bob:
        job = alice.post("/v1/jobs", files={"file": ("a.wav", short_speech.read_bytes())}).json()
        local_stack.wait_finished(alice, job["id"])
        jid = job["id"]
        assert bob.get(f"/v1/jobs/{jid}").status_code == 404
        assert bob.post(f"/v1/jobs/{jid}/cancel").status_code == 404
        assert bob.post(f"/v1/jobs/{jid}/retry").status_code == 404
        for name in DOCUMENT_NAMES:
            assert bob.get(f"/v1/jobs/{jid}/documents/{name}").status_code == 404
            assert alice.get(f"/v1/jobs/{jid}/documents/{name}").status_code == 200
        assert jid not in [j["id"] for j in bob.get("/v1/jobs").json()["jobs"]]
        assert jid in [j["id"] for j in alice.get("/v1/jobs", params={"limit": 200}).json()["jobs"]]
        assert bob.post("/v1/jobs", json={"upload_id": "0" * 32}).status_code in (404, 422)
        assert alice.get(f"/v1/jobs/{jid}/documents/../../etc").status_code == 404
        assert alice.get(f"/v1/jobs/{jid}/documents/secrets.txt").status_code == 404


def test_list_filters_and_pages(local_stack: ApiStack, short_speech: Path) -> None:
    with local_stack.client("carol") as carol:
        ids = []
        for i in range(3):
            r = carol.post("/v1/jobs", files={"file": (f"{i}.wav", short_speech.read_bytes())})
            ids.append(r.json()["id"])
        carol.post(f"/v1/jobs/{ids[0]}/cancel")
        page = carol.get("/v1/jobs", params={"limit": 2}).json()
        assert page["total"] == 3 and len(page["jobs"]) == 2 and page["next"]
        rest = httpx.get(page["next"], headers=carol.headers).json()
        assert len(rest["jobs"]) == 1 and rest["next"] is None
        assert {j["id"] for j in page["jobs"] + rest["jobs"]} == set(ids)
        cancelled = carol.get("/v1/jobs", params={"status": "cancelled"}).json()
        assert [j["id"] for j in cancelled["jobs"]] == [ids[0]]
        assert carol.get("/v1/jobs", params={"status": "nonsense"}).status_code == 422


def test_cancel_then_retry_runs_the_job(local_stack: ApiStack, short_speech: Path) -> None:
    with local_stack.client("alice") as client:
        job = client.post("/v1/jobs", files={"file": ("c.wav", short_speech.read_bytes())}).json()
        cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        doc = client.get(f"/v1/jobs/{job['id']}/documents/document.md")
        assert doc.status_code == 409
        retried = client.post(f"/v1/jobs/{job['id']}/retry")
        assert retried.status_code == 202 and retried.json()["attempt"] == 1
        assert local_stack.wait_finished(client, job["id"])["status"] == "succeeded"
        assert client.post(f"/v1/jobs/{job['id']}/retry").status_code == 422


def test_json_source_must_be_s3(local_stack: ApiStack) -> None:
    with local_stack.client("alice") as client:
        assert client.post("/v1/jobs", json={"source": "/etc/passwd"}).status_code == 422
        assert client.post("/v1/jobs", json={"source": "s3://nobucket/x.wav"}).status_code in (422, 503)
        assert client.post("/v1/jobs", json={}).status_code == 422
        assert (
            client.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"}).status_code
            == 422
        )
        assert (
            client.post("/v1/jobs", content=b"hi", headers={"Content-Type": "text/plain"}).status_code == 415
        )
        r = client.post("/v1/uploads", json={"filename": "a.wav", "size": 10})
        assert r.status_code == 422 and "S3 storage" in r.json()["detail"]


def test_health_readiness_and_metrics(local_stack: ApiStack) -> None:
    ready = httpx.get(local_stack.url + "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "database": "ok", "broker": "ok", "storage": "ok"}
    assert httpx.get(local_stack.url + "/metrics").status_code == 401  # every tenant's counts: operators only
    text = httpx.get(local_stack.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert 'voxbatch_jobs{state="succeeded"}' in text
    assert 'voxbatch_queue_depth{queue="gpu"}' in text
    assert "voxbatch_window_duration_seconds_bucket" in text
    assert "voxbatch_broker_up 1.0" in text


def test_openapi_documents_every_endpoint(local_stack: ApiStack) -> None:
    spec = httpx.get(local_stack.url + "/openapi.json").json()
    paths = spec["paths"]
    for path in ["/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/documents/{name}",
                 "/v1/jobs/{job_id}/cancel",
                 "/v1/jobs/{job_id}/retry", "/v1/uploads", "/v1/uploads/{upload_id}/complete",
                 "/healthz", "/readyz", "/metrics"]:  # fmt: skip
        assert path in paths, path
        for op in paths[path].values():
            assert op.get("summary") or op.get("description"), path
    body = paths["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert "X-Voxbatch-Signature" in spec["info"]["description"]
