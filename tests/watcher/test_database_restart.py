"""A real ``voxbatch watch`` process while PostgreSQL crashes and comes back (issue 21: in the 30-minute
chaos soak the watcher exited on a PostgreSQL restart, and every recording dropped after it waited
for good): a scan that cannot reach the database fails like any other scan, and the next scan after
the database is back takes the new recording."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.services import VOXBATCH, Postgres, _pg_bin, running_postgres, wait_until
from tests.watcher.conftest import AWS_ENV


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A cluster of this test's own: the test crashes it."""
    if _pg_bin() is None:
        pytest.skip("PostgreSQL is not installed")
    with running_postgres() as server:
        yield server


def ledger_job(url: str, key: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT job_id FROM dropobject WHERE key = %s", (key,)).fetchone()
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):  # down, or not migrated yet
        return None
    return None if row is None else row[0]


def test_the_watcher_outlives_a_postgresql_crash_and_takes_the_next_recording(
    own_postgres: Postgres, moto_endpoint: str, s3: Any, short_speech: Path, tmp_path: Path
) -> None:
    bucket = f"drop-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    database = own_postgres.fresh_database_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBATCH_")}
    env.update(
        AWS_ENV,
        VOXBATCH_DATA_DIR=str(tmp_path / "data"),
        VOXBATCH_DATABASE_URL=database,
        VOXBATCH_S3_ENDPOINT_URL=moto_endpoint,
        VOXBATCH_STORAGE_URL=f"s3://{bucket}/store/",
        VOXBATCH_DROP_URL=f"s3://{bucket}/inbox/",
        VOXBATCH_OUTBOX_URL=f"s3://{bucket}/outbox/",
        # No broker answers here: a job's split stays in the outbox; this test is about the ledger.
        VOXBATCH_BROKER_URL="redis://127.0.0.1:1/0",
    )
    log = tmp_path / "watcher.log"
    with log.open("wb") as out:
        watcher = subprocess.Popen(
            [*VOXBATCH, "watch", "--interval", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        s3.upload_file(str(short_speech), bucket, "inbox/before.wav")
        wait_until(lambda: ledger_job(database, "inbox/before.wav"), 60, "the first recording's job")
        own_postgres.crash()
        scans = log.read_text().count("drop: scan")
        wait_until(
            lambda: log.read_text().count("drop: scan") > scans or watcher.poll() is not None,
            60,
            "a scan while the database is down",
        )
        own_postgres.start()
        s3.upload_file(str(short_speech), bucket, "inbox/after.wav")
        wait_until(
            lambda: ledger_job(database, "inbox/after.wav") or watcher.poll() is not None,
            60,
            "the recording dropped after the restart to get its job",
        )
        assert watcher.poll() is None, log.read_text()[-4000:]
        assert ledger_job(database, "inbox/after.wav"), log.read_text()[-4000:]
    finally:
        watcher.terminate()
        watcher.wait(30)
