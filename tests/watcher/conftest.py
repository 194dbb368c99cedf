"""A moto S3/SQS server (real HTTP on 127.0.0.1), the AWS CLI as the uploader, and a watcher factory.

Each test gets its own bucket, so tests share one server without resetting it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from jobs.db import Database
from jobs.engine import SourceInfo
from jobs.options import JobOptions
from jobs.runtime import Runtime
from jobs.settings import Settings
from jobs.steps.create import create_job
from jobs.storage import LocalStorage
from workers import submission
from workers.audio import FfmpegAudio
from workers.watcher import Submit, Watcher

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
AWS_CLI = str(Path(sys.executable).with_name("aws"))


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"drop-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def aws_cli_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AWS CLI config whose multipart threshold (5 MB, S3's minimum part) a 6 MB file crosses."""
    path = tmp_path_factory.mktemp("aws") / "config"
    path.write_text(
        "[default]\nregion = us-east-1\ns3 =\n  multipart_threshold = 5MB\n  multipart_chunksize = 5MB\n"
    )
    return path


@pytest.fixture
def aws_cp(moto_endpoint: str, aws_cli_config: Path) -> Callable[..., None]:
    """``aws s3 cp SRC s3://...`` (``--recursive`` for a directory) against the moto server."""

    def cp(src: Path, dest: str) -> None:
        env = {**os.environ, **AWS_ENV, "AWS_CONFIG_FILE": str(aws_cli_config)}
        args = [AWS_CLI, "--endpoint-url", moto_endpoint, "s3", "cp", str(src), dest, "--only-show-errors"]
        if src.is_dir():
            args.append("--recursive")
        subprocess.run(args, env=env, check=True, capture_output=True, timeout=120)

    return cp


@pytest.fixture(scope="session")
def long_wav(short_speech: Path, audio_dir: Path) -> Path:
    """~200 s of speech as 16 kHz mono WAV (6.4 MB): the AWS CLI uploads it in two parts."""
    out = audio_dir / "long-speech.wav"
    if not out.exists():
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(short_speech),
             "-t", "200", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(out)],
            check=True,
        )  # fmt: skip
    return out


@dataclass
class DropWorld:
    """A bucket with an inbox and an outbox, a database, and jobs created without a broker."""

    settings: Settings
    db: Database
    rt: Runtime
    bucket: str
    s3: Any
    endpoint: str

    def submit(
        self,
        source: str,
        options: JobOptions,
        source_name: str,
        tenant: str | None = None,
        duration_s: float | None = None,
    ) -> str:
        # The real job creation (options validated, row written); only the enqueue is left out,
        # which these tests do not exercise (tests/watcher/test_end_to_end.py does).
        return create_job(
            self.rt, source, options, source_name=source_name, tenant=tenant, duration_s=duration_s
        ).id

    def real_submit(
        self,
        source: str,
        options: JobOptions,
        source_name: str,
        tenant: str | None = None,
        duration_s: float | None = None,
    ) -> str:
        """The watcher's real submit (``workers.submission``): job row and split in the outbox in
        one transaction, relayed at once to whatever broker the runtime has."""
        job = submission.submit(
            self.rt, source, options, source_name=source_name, tenant=tenant, duration_s=duration_s
        )
        return job.id

    def watcher(self, submit: Submit | None = None, **overrides: Any) -> Watcher:
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        return Watcher(
            settings, self.db, submit or self.submit, s3=boto3.client("s3", endpoint_url=self.endpoint)
        )

    def outbox_keys(self) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="outbox/")
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    def get(self, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())


@pytest.fixture
def drop(tmp_path: Path, moto_endpoint: str, s3: Any, bucket: str) -> DropWorld:
    settings = Settings(
        data_dir=tmp_path / "data",
        drop_url=f"s3://{bucket}/inbox/",
        outbox_url=f"s3://{bucket}/outbox/",
        s3_endpoint_url=moto_endpoint,
        storage_url=(tmp_path / "store").as_uri(),
        engine="offline",
    )
    db = Database(settings.resolved_database_url())
    db.migrate()
    rt = Runtime(
        db=db,
        storage=LocalStorage(tmp_path / "store"),
        audio=FfmpegAudio(),
        settings=settings,
        engine_factory=lambda: pytest.fail("these tests never run an engine"),
    )
    return DropWorld(settings=settings, db=db, rt=rt, bucket=bucket, s3=s3, endpoint=moto_endpoint)


class CountingAudio(FfmpegAudio):
    """Real ffprobe, counted; each probe waits at ``gate`` (when set) until that many run at once."""

    def __init__(self, gate: threading.Barrier | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.probes = 0
        self.lock = threading.Lock()

    def probe(self, source: str) -> SourceInfo:
        with self.lock:
            self.probes += 1
        if self.gate is not None:
            self.gate.wait()  # BrokenBarrierError (the recording deferred) if probes run one by one
        return super().probe(source)
