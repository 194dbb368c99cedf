"""GET /v1/jobs/{id}/recording on S3 storage (a moto server): uploads in the storage bucket and
``s3://`` sources in the buckets jobs may be created from stream with ranged GetObject; a bucket
that is not one of those answers 404."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import create_key
from jobs.db import Database
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.s3 import S3Storage
from jobs.settings import Settings
from jobs.steps.create import create_job
from tests.fixtures.s3 import MotoS3
from workers.audio import FfmpegAudio

DATA = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB


@pytest.fixture
def s3_api(moto_s3: MotoS3, tmp_path: Path) -> Iterator[tuple[Runtime, TestClient, str]]:
    store_bucket = moto_s3.create_bucket()
    sources = moto_s3.create_bucket()
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=moto_s3.endpoint_url, source_buckets=sources)
    db = Database(settings.resolved_database_url())
    db.migrate()
    rt = Runtime(
        db=db,
        storage=S3Storage(store_bucket, "vb", endpoint_url=moto_s3.endpoint_url),
        audio=FfmpegAudio(),
        settings=settings,
        engine_factory=lambda: None,  # type: ignore[arg-type,return-value]
    )
    client = TestClient(
        create_app(settings, rt), headers={"Authorization": f"Bearer {create_key(db, 'sam')}"}
    )
    with client:
        yield rt, client, sources


def test_an_upload_in_the_storage_bucket_streams_with_ranges(s3_api: tuple[Runtime, TestClient, str]) -> None:
    rt, client, _ = s3_api
    job = create_job(rt, "talk.m4a", JobOptions(), tenant="sam")
    key = f"jobs/{job.id}/source/talk.m4a"
    rt.storage.put_bytes(key, DATA)
    rt.store.update(job.id, source_key=key)
    part = client.get(f"/v1/jobs/{job.id}/recording", headers={"Range": "bytes=1000000-1000099"})
    assert part.status_code == 206
    assert part.content == DATA[1_000_000:1_000_100]
    assert part.headers["content-range"] == f"bytes 1000000-1000099/{len(DATA)}"
    assert part.headers["content-type"] == "audio/mp4"
    whole = client.get(f"/v1/jobs/{job.id}/recording")
    assert whole.status_code == 200 and whole.content == DATA
    assert client.get(f"/v1/jobs/{job.id}/recording", headers={"Range": "bytes=9999999-"}).status_code == 416


def test_s3_sources_stream_from_allowed_buckets_only(
    s3_api: tuple[Runtime, TestClient, str], moto_s3: MotoS3
) -> None:
    rt, client, sources = s3_api
    moto_s3.client().put_object(Bucket=sources, Key="talks/panel.mp3", Body=DATA)
    job = create_job(rt, f"s3://{sources}/talks/panel.mp3", JobOptions(), tenant="sam")
    link = client.post(f"/v1/jobs/{job.id}/recording/link")
    assert link.status_code == 200, link.text
    assert link.json()["size"] == len(DATA)
    part = TestClient(client.app).get(link.json()["recording_url"], headers={"Range": "bytes=-10"})
    assert part.status_code == 206 and part.content == DATA[-10:]

    elsewhere = moto_s3.create_bucket()
    moto_s3.client().put_object(Bucket=elsewhere, Key="x.mp3", Body=b"x")
    job = create_job(rt, f"s3://{elsewhere}/x.mp3", JobOptions(), tenant="sam")
    assert client.get(f"/v1/jobs/{job.id}/recording").status_code == 404
