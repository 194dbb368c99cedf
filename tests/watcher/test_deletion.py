"""Deleting drop-folder jobs against the moto S3 server: a job's deletion (``DELETE /v1/jobs/{id}``,
``voxbatch delete``) and its collection's remove the copies its end wrote into the outbox (documents
or error.json), leave anything else in that folder, and never touch the recording in the inbox."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sqlmodel import select

from jobs import collections, retention
from jobs.models import Job
from jobs.options import JobOptions
from jobs.steps.ending import cancel
from jobs.steps.local import run_local
from tests.watcher.conftest import DropWorld
from workers.engines import build_engine
from workers.outbox import deliver
from workers.runtime import build_runtime


def test_deleting_drop_jobs_removes_their_outbox_copies_and_never_the_inbox(
    drop: DropWorld, short_speech: Path
) -> None:
    # The hooks a deletion runs, as every process's Runtime has them (API, CLI, workers).
    hooks = build_runtime(drop.settings, migrate=False).on_job_deleted
    rt = dataclasses.replace(
        drop.rt, engine_factory=lambda: build_engine(drop.settings), on_job_deleted=hooks
    )
    collections.create(drop.db, "drop", "DevConf", JobOptions())
    sources = ["inbox/DevConf/keynote.wav", "inbox/DevConf/panel.wav", "inbox/solo.wav", "inbox/gone.wav"]
    for key in sources:
        drop.s3.upload_file(str(short_speech), drop.bucket, key)
    assert len(drop.watcher().scan().submitted) == 4
    with rt.db.session() as s:
        ids = {j.source_name: j.id for j in s.exec(select(Job))}
    for name in ("keynote.wav", "panel.wav", "solo.wav"):
        run_local(rt, ids[name])
    cancel(rt, ids["gone.wav"])
    for job_id in ids.values():
        assert deliver(rt, job_id)  # what the announce step runs
    # Something of the user's own beside our documents: not ours to delete.
    drop.s3.put_object(Bucket=drop.bucket, Key="outbox/DevConf/keynote.wav/notes.txt", Body=b"mine")
    delivered = drop.outbox_keys()
    assert "outbox/gone.wav/error.json" in delivered and "outbox/solo.wav/document.md" in delivered

    retention.delete_job(rt, ids["solo.wav"], "drop")
    retention.delete_job(rt, ids["gone.wav"], "drop")
    left = drop.outbox_keys()
    assert not [k for k in left if k.startswith(("outbox/solo.wav/", "outbox/gone.wav/"))]
    assert [k for k in left if k.startswith("outbox/DevConf/")] == [
        k for k in delivered if k.startswith("outbox/DevConf/")
    ]
    assert retention.delete_collection(rt, "drop", "DevConf") == 2
    assert drop.outbox_keys() == ["outbox/DevConf/keynote.wav/notes.txt"]
    # The recordings are where the user put them, byte for byte.
    for key in sources:
        assert drop.get(key) == short_speech.read_bytes()
