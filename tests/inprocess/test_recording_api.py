"""GET|HEAD /v1/jobs/{id}/recording (Range requests), its signed links and the captions route, in
process: an ASGI client on SQLite and local storage."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from api import recording_routes
from api.app import create_app
from api.keys import create_key
from api.recording_routes import Unsatisfiable, parse_range, signed_query
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.steps.create import create_job
from jobs.tenants import tenant_secret
from tests.player import Segment, finished_job

DATA = bytes(range(256)) * 4000 + b"tail"  # 1,024,004 bytes
SEGMENTS = [Segment(0.0, 2.5, "Hello there."), Segment(3.0, 6.0, "Second segment.")]


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "talk.mp3"
    path.write_bytes(DATA)
    return path


@pytest.fixture
def client(rt: Runtime) -> Iterator[Callable[[str | None], httpx.Client]]:
    app = create_app(rt.settings, rt)
    opened: list[TestClient] = []

    def make(key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        c = TestClient(app, headers=headers)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


def test_whole_file_range_and_suffix(
    rt: Runtime, client: Callable[[str | None], httpx.Client], recording: Path
) -> None:
    key = create_key(rt.db, "alpha")
    job = finished_job(rt, "alpha", recording, SEGMENTS, duration_s=6.0)
    c = client(key)
    url = f"/v1/jobs/{job.id}/recording"

    whole = c.get(url)
    assert whole.status_code == 200
    assert whole.content == DATA
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "audio/mpeg"
    assert whole.headers["content-length"] == str(len(DATA))
    assert whole.headers["x-content-type-options"] == "nosniff"

    part = c.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == DATA[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(DATA)}"
    assert part.headers["content-length"] == "100"

    open_ended = c.get(url, headers={"Range": "bytes=1024000-"})
    assert open_ended.status_code == 206 and open_ended.content == b"tail"
    past_end = c.get(url, headers={"Range": "bytes=1024000-99999999"})
    assert past_end.status_code == 206 and past_end.content == b"tail"
    suffix = c.get(url, headers={"Range": "bytes=-6"})
    assert suffix.status_code == 206 and suffix.content == DATA[-6:]
    assert suffix.headers["content-range"] == f"bytes {len(DATA) - 6}-{len(DATA) - 1}/{len(DATA)}"

    for unsatisfiable in (f"bytes={len(DATA)}-", "bytes=-0", f"bytes={len(DATA) + 10}-{len(DATA) + 20}"):
        refused = c.get(url, headers={"Range": unsatisfiable})
        assert refused.status_code == 416, unsatisfiable
        assert refused.headers["content-range"] == f"bytes */{len(DATA)}"

    # Malformed, several ranges, another unit, If-Range: the whole file is a valid answer.
    for ignored in ({"Range": "bytes=9-3"}, {"Range": "bytes=0-1,5-6"}, {"Range": "items=0-1"},
                    {"Range": "bytes=abc"}, {"Range": "bytes=0-1", "If-Range": '"etag"'}):  # fmt: skip
        full = c.get(url, headers=ignored)
        assert full.status_code == 200 and len(full.content) == len(DATA), ignored

    head = c.head(url, headers={"Range": "bytes=10-19"})
    assert head.status_code == 206
    assert head.headers["content-length"] == "10"
    assert head.headers["content-range"] == f"bytes 10-19/{len(DATA)}"
    assert head.content == b""
    head = c.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(DATA))


def test_other_tenants_missing_keys_and_unstored_recordings_are_404(
    rt: Runtime, client: Callable[[str | None], httpx.Client], recording: Path
) -> None:
    mine, theirs = create_key(rt.db, "alpha"), create_key(rt.db, "beta")
    job = finished_job(rt, "beta", recording, SEGMENTS, duration_s=6.0)
    assert client(None).get(f"/v1/jobs/{job.id}/recording").status_code == 401
    assert client("vbk_nope_nope").get(f"/v1/jobs/{job.id}/recording").status_code == 401
    for method, path in (
        ("GET", f"/v1/jobs/{job.id}/recording"),
        ("HEAD", f"/v1/jobs/{job.id}/recording"),
        ("POST", f"/v1/jobs/{job.id}/recording/link"),
        ("GET", f"/v1/jobs/{job.id}/recording/captions.vtt"),
        ("GET", "/v1/jobs/nosuchjob/recording"),
    ):
        assert client(mine).request(method, path).status_code == 404, (method, path)
    assert client(theirs).get(f"/v1/jobs/{job.id}/recording").status_code == 200

    # A job on a local path given to `voxbatch run`, or on a bucket we do not read: not served.
    local = create_job(rt, str(recording), JobOptions(), tenant="beta")
    answer = client(theirs).get(f"/v1/jobs/{local.id}/recording")
    assert answer.status_code == 404 and "not in this server's storage" in answer.json()["detail"]
    remote = create_job(rt, "s3://someone-elses-bucket/talk.mp3", JobOptions(), tenant="beta")
    assert client(theirs).post(f"/v1/jobs/{remote.id}/recording/link").status_code == 404


def test_a_signed_link_works_without_a_key_for_one_job_until_it_expires(
    rt: Runtime,
    client: Callable[[str | None], httpx.Client],
    recording: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = create_key(rt.db, "alpha")
    job = finished_job(rt, "alpha", recording, SEGMENTS, duration_s=6.0)
    other = finished_job(rt, "alpha", recording, SEGMENTS, duration_s=6.0)
    link = client(key).post(f"/v1/jobs/{job.id}/recording/link")
    assert link.status_code == 200, link.text
    body = link.json()
    assert body["media_type"] == "audio/mpeg" and body["kind"] == "audio" and body["size"] == len(DATA)
    assert body["recording_url"].startswith(f"/v1/jobs/{job.id}/recording?expires=")
    assert body["captions_url"].startswith(f"/v1/jobs/{job.id}/recording/captions.vtt?expires=")

    anonymous = client(None)
    ranged = anonymous.get(body["recording_url"], headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.content == DATA[:10]
    captions = anonymous.get(body["captions_url"])
    assert captions.status_code == 200
    assert captions.headers["content-type"] == "text/vtt; charset=utf-8"
    assert captions.text.startswith("WEBVTT") and "Second segment." in captions.text

    query = parse_qs(urlsplit(body["recording_url"]).query)
    expires, sig = int(query["expires"][0]), query["sig"][0]
    # The signature names one job and one expiry: moving or extending it fails like a missing job.
    assert anonymous.get(f"/v1/jobs/{other.id}/recording?expires={expires}&sig={sig}").status_code == 404
    assert anonymous.get(f"/v1/jobs/{job.id}/recording?expires={expires + 60}&sig={sig}").status_code == 404
    assert anonymous.get(f"/v1/jobs/{job.id}/recording?expires={expires}&sig={'0' * 64}").status_code == 404
    assert anonymous.get(f"/v1/jobs/{job.id}/recording?sig={sig}").status_code == 404

    monkeypatch.setattr(recording_routes.time, "time", lambda: expires + 1.0)
    expired = anonymous.get(body["recording_url"])
    assert expired.status_code == 403 and "expired" in expired.json()["detail"]


def test_an_expired_link_made_now_is_refused(
    rt: Runtime, client: Callable[[str | None], httpx.Client], recording: Path
) -> None:
    job = finished_job(rt, "alpha", recording, SEGMENTS, duration_s=6.0)
    create_key(rt.db, "alpha")
    secret = tenant_secret(rt.db, "alpha")
    assert secret
    past = int(time.time()) - 5
    assert (
        client(None).get(f"/v1/jobs/{job.id}/recording?{signed_query(secret, job.id, past)}").status_code
        == 403
    )


def test_captions_wait_for_the_job_and_media_types_follow_the_extension(
    rt: Runtime, client: Callable[[str | None], httpx.Client], tmp_path: Path
) -> None:
    key = create_key(rt.db, "alpha")
    queued = create_job(rt, "talk.wav", JobOptions(), tenant="alpha")
    rt.storage.put_bytes(f"jobs/{queued.id}/source/talk.wav", b"RIFF")
    rt.store.update(queued.id, source_key=f"jobs/{queued.id}/source/talk.wav")
    c = client(key)
    assert c.get(f"/v1/jobs/{queued.id}/recording/captions.vtt").status_code == 409
    link = c.post(f"/v1/jobs/{queued.id}/recording/link").json()
    assert link["captions_url"] is None and link["media_type"] == "audio/wav"
    assert c.get(f"/v1/jobs/{queued.id}/recording").headers["content-type"] == "audio/wav"
    for name, media, kind in (("clip.webm", "video/webm", "video"), ("page.html", "application/octet-stream",
                                                                       "audio")):  # fmt: skip
        path = tmp_path / name
        path.write_bytes(b"<html><script>alert(1)</script>")
        job = finished_job(rt, "alpha", path, SEGMENTS, duration_s=6.0)
        link = c.post(f"/v1/jobs/{job.id}/recording/link").json()
        assert (link["media_type"], link["kind"]) == (media, kind)
        assert c.get(f"/v1/jobs/{job.id}/recording").headers["content-type"] == media


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-0", 10, (0, 1)),
        ("bytes=2-", 10, (2, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=5-100", 10, (5, 10)),
        ("BYTES = 1-2", 10, (1, 3)),
        ("bytes=3-2", 10, None),
        ("bytes=-", 10, None),
        ("bytes=1-2,4-5", 10, None),
        ("bytes=x-2", 10, None),
        ("bytes=1-x", 10, None),
        ("bytes=+1-2", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)]
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)
