"""S3 storage on a moto server: uploads through the API, presigned multipart, existing objects."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import httpx

from tests.api.stack import BUCKET, SHARED_BUCKET, ApiStack, s3_client
from tests.documents import markers_in
from tests.speech import Recording


def test_upload_through_the_api_into_s3(s3_stack: ApiStack, marker_recording_mp3: Recording) -> None:
    with s3_stack.client("alice") as client, marker_recording_mp3.path.open("rb") as f:
        r = client.post("/v1/jobs", files={"file": ("talk.mp3", f)}, data={"preset": "panel"})
        assert r.status_code == 202, r.text
        job = s3_stack.wait_finished(client, r.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        doc = client.get(job["links"]["documents"]["transcript.txt"])
        assert markers_in(doc.text) == [m.k for m in marker_recording_mp3.markers]
    keys = [o["Key"] for o in s3_client(s3_stack.s3_endpoint).list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(k.startswith("s3/uploads/") and k.endswith("/talk.mp3") for k in keys)


def test_presigned_multipart_flow(s3_stack: ApiStack, marker_recording: Recording, tmp_path: Path) -> None:
    # 44.1 kHz stereo WAV of the talk: about 20 MB, so three 8 MiB parts.
    big = tmp_path / "big talk.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(marker_recording.path),
         "-ar", "44100", "-ac", "2", str(big)],
        check=True,
    )  # fmt: skip
    size = big.stat().st_size
    with s3_stack.client("alice") as alice, s3_stack.client("bob") as bob:
        start = alice.post("/v1/uploads", json={"filename": big.name, "size": size})
        assert start.status_code == 201, start.text
        upload = start.json()
        assert len(upload["parts"]) == math.ceil(size / upload["part_size"]) >= 2
        etags = []
        with big.open("rb") as f, httpx.Client(timeout=60) as raw:
            for part in upload["parts"]:
                put = raw.put(part["url"], content=f.read(upload["part_size"]))
                assert put.status_code == 200, put.text
                etags.append({"part_number": part["part_number"], "etag": put.headers["ETag"]})
        # Another tenant can neither complete nor use this upload.
        assert (
            bob.post(f"/v1/uploads/{upload['upload_id']}/complete", json={"parts": etags}).status_code == 404
        )
        done = alice.post(upload["complete_url"], json={"parts": etags})
        assert done.status_code == 200, done.text
        assert done.json()["size"] == size
        assert bob.post("/v1/jobs", json={"upload_id": upload["upload_id"]}).status_code == 404
        r = alice.post("/v1/jobs", json={"upload_id": upload["upload_id"], "language": "en"})
        assert r.status_code == 202, r.text
        job = s3_stack.wait_finished(alice, r.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        assert job["source_name"] == "big_talk.wav"
        text = alice.get(f"/v1/jobs/{job['id']}/documents/transcript.txt").text
        assert markers_in(text) == [m.k for m in marker_recording.markers]


def test_job_on_an_existing_object(s3_stack: ApiStack, marker_recording_mp3: Recording) -> None:
    s3 = s3_client(s3_stack.s3_endpoint)
    if SHARED_BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=SHARED_BUCKET)
    s3.upload_file(str(marker_recording_mp3.path), SHARED_BUCKET, "talks/existing.mp3")
    # The service's own bucket is not a place for tenants' sources, even outside its prefix.
    s3.upload_file(str(marker_recording_mp3.path), BUCKET, "inbox/existing.mp3")
    with s3_stack.client("alice") as client:
        r = client.post("/v1/jobs", json={"source": f"s3://{SHARED_BUCKET}/talks/existing.mp3"})
        assert r.status_code == 202, r.text
        assert s3_stack.wait_finished(client, r.json()["id"])["status"] == "succeeded"
        missing = client.post("/v1/jobs", json={"source": f"s3://{SHARED_BUCKET}/talks/missing.mp3"})
        assert missing.status_code == 422
        hidden = client.post("/v1/jobs", json={"source": f"s3://{BUCKET}/inbox/existing.mp3"})
        assert hidden.status_code == 422
        assert hidden.json()["detail"].replace("inbox/existing", "x") == missing.json()["detail"].replace(
            f"{SHARED_BUCKET}/talks/missing", f"{BUCKET}/x"
        )
        # Other tenants' objects in the service's own prefix are out of reach, answered as missing.
        assert (
            client.post(
                "/v1/jobs", json={"source": f"s3://{BUCKET}/s3/jobs/x/output/document.md"}
            ).status_code
            == 422
        )
        # A bucket the server's credentials can read but the operator did not open to tenants.
        s3.create_bucket(Bucket="someone-elses")
        s3.upload_file(str(marker_recording_mp3.path), "someone-elses", "private.mp3")
        other = client.post("/v1/jobs", json={"source": "s3://someone-elses/private.mp3"})
        assert other.status_code == 422 and "VOXBATCH_SOURCE_BUCKETS" in other.json()["detail"]


def test_not_audio_in_s3_is_refused_and_deleted(s3_stack: ApiStack) -> None:
    with s3_stack.client("alice") as client:
        r = client.post("/v1/jobs", files={"file": ("notes.mp3", b"plain text, not audio\n" * 50)})
        assert r.status_code == 422 and "notes.mp3" in r.json()["detail"]
    keys = [
        o["Key"] for o in s3_client(s3_stack.s3_endpoint).list_objects_v2(Bucket=BUCKET).get("Contents", [])
    ]
    assert not any(k.endswith("notes.mp3") for k in keys)
