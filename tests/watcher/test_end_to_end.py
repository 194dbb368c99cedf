"""The drop folder end to end: AWS CLI uploads into a moto bucket, two `voxbatch watch --once`
processes at once, real `voxbatch worker` processes on redis-server and PostgreSQL, the stand-in
vLLM server, and documents (or error.json) in the outbox.

The marker talk (~2 min) in 1-minute windows: the stand-in transcribes the marker tones it hears,
so the delivered document proves which audio it was made from.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.documents import DOCUMENT_NAMES
from tests.documents import check_document
from tests.fixtures.services import VOXBATCH, Cluster, Postgres, RedisServer, wait_until
from tests.speech import Recording
from tests.standins.vllm_server import StandInVLLM


@pytest.fixture
def stand_in() -> Iterator[StandInVLLM]:
    with StandInVLLM() as server:
        yield server


@pytest.fixture
def cluster(
    redis_server: RedisServer,
    postgres: Postgres,
    cluster_factory: Callable[..., Cluster],
    stand_in: StandInVLLM,
    moto_endpoint: str,
    bucket: str,
) -> Cluster:
    return cluster_factory(
        redis_server.url,
        postgres.fresh_database_url(),
        stand_in.url,
        VOXBATCH_DROP_URL=f"s3://{bucket}/inbox/",
        VOXBATCH_OUTBOX_URL=f"s3://{bucket}/outbox/",
        VOXBATCH_S3_ENDPOINT_URL=moto_endpoint,
        VOXBATCH_WINDOW_MINUTES="1",
    )


def download_outbox(s3: Any, bucket: str, out: Path) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="outbox/")
    keys = sorted(o["Key"] for p in pages for o in p.get("Contents", []))
    for key in keys:
        dest = out / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(dest))
    return keys


def test_dropped_recordings_come_back_as_documents(
    cluster: Cluster,
    s3: Any,
    bucket: str,
    aws_cp: Any,
    marker_recording: Recording,
    marker_recording_mp3: Recording,
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "track b").mkdir(parents=True)
    (inbox / "Ünïcode ☕" / "deep").mkdir(parents=True)
    shutil.copyfile(marker_recording.path, inbox / "track b" / "Panel.wav")
    shutil.copyfile(marker_recording_mp3.path, inbox / "Ünïcode ☕" / "deep" / "Talk + Q&A.mp3")
    (inbox / "track b" / "Panel.json").write_text(json.dumps({"instructions": "Name every marker."}))
    (inbox / "notes.txt").write_text("a text file, not a recording\n")
    aws_cp(inbox, f"s3://{bucket}/inbox/")

    # Two watchers at once, as separate processes: the ledger's unique constraint decides.
    procs = [
        subprocess.Popen(
            [*VOXBATCH, "watch", "--once"],
            env=cluster.env,
            cwd=cluster.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    job_ids = [line for out, _ in outputs for line in out.split()]
    assert len(job_ids) == 2 and len(set(job_ids)) == 2, outputs

    cluster.start_worker("cpu", concurrency=1)
    cluster.start_worker("gpu", concurrency=2)
    for job_id in job_ids:
        done = cluster.wait(job_id, timeout=180)
        assert done.returncode == 0, (done.stdout, done.stderr, cluster.logs())

    out = tmp_path / "out"
    # The documents are written by the reduce task before the job is marked done; the outbox
    # copy follows right after it in the same task.
    # Every document of two jobs, and one error.json.
    expected = 2 * len(DOCUMENT_NAMES) + 1
    wait_until(lambda: len(download_outbox(s3, bucket, out)) == expected, 30, "the outbox to fill")
    keys = download_outbox(s3, bucket, out)
    assert keys == sorted(
        [
            "outbox/notes.txt/error.json",
            *(f"outbox/track b/Panel.wav/{n}" for n in DOCUMENT_NAMES),
            *(f"outbox/Ünïcode ☕/deep/Talk + Q&A.mp3/{n}" for n in DOCUMENT_NAMES),
        ]
    )
    panel = check_document(out / "outbox" / "track b" / "Panel.wav", marker_recording)
    assert panel["instructions"] == "Name every marker."
    assert panel["source"] == f"s3://{bucket}/inbox/track%20b/Panel.wav"
    check_document(out / "outbox" / "Ünïcode ☕" / "deep" / "Talk + Q&A.mp3", marker_recording_mp3)
    assert (
        "not an audio or video file"
        in json.loads((out / "outbox/notes.txt/error.json").read_text())["reason"]
    )

    # A later scan finds nothing new; the sources are untouched.
    again = cluster.cli("watch", "--once")
    assert again.returncode == 0 and again.stdout.strip() == "", again.stderr
    assert s3.head_object(Bucket=bucket, Key="inbox/track b/Panel.wav")["ContentLength"] == (
        marker_recording.path.stat().st_size
    )


def test_a_recording_that_fails_on_a_worker_gets_error_json(
    cluster: Cluster, s3: Any, bucket: str, marker_recording: Recording, tmp_path: Path
) -> None:
    s3.upload_file(str(marker_recording.path), bucket, "inbox/gone/Retracted talk.wav")
    done = cluster.cli("watch", "--once")
    assert done.returncode == 0, done.stderr
    (job_id,) = done.stdout.split()
    # Taken back by its owner after submission: the split on the worker cannot read it.
    s3.delete_object(Bucket=bucket, Key="inbox/gone/Retracted talk.wav")
    cluster.start_worker("cpu,gpu", concurrency=1)
    finished = cluster.wait(job_id, timeout=180)
    assert finished.returncode == 1, finished.stdout
    out = tmp_path / "out"
    keys = wait_until(lambda: download_outbox(s3, bucket, out), 30, "error.json in the outbox")
    assert keys == ["outbox/gone/Retracted talk.wav/error.json"]
    error = json.loads((out / "outbox/gone/Retracted talk.wav/error.json").read_text())
    assert error["job_id"] == job_id
    assert "does not exist or is not readable" in error["reason"]
