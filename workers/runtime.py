"""Builds the pipeline's Runtime for this process from settings: database, storage, ffmpeg, engine,
and what a job's end sets off here: its announcement (the drop-folder outbox, the webhook), a step
of its own put into the outbox in the ending's transaction (``announces``: a drop-folder job has an
outbox result to write; a webhook the store sees itself), so whichever process ends the job (an API
cancel, a cpu worker's reduce) neither waits on S3 or a webhook receiver nor can lose the
announcement by dying; then the outbox relayed and the meter run (the ended job's slots in the gpu
queue go to others)."""

from __future__ import annotations

import threading

from jobs.db import Database
from jobs.runtime import Runtime
from jobs.settings import Settings, get_settings
from jobs.storage_urls import open_storage
from workers.drop_ledger import names_job
from workers.meter import wake_after_end
from workers.outbox import deliver_quietly, remove_delivered
from workers.webhooks import notify, notify_window

_process_runtime: Runtime | None = None
_lock = threading.Lock()


def announce_end(rt: Runtime, job_id: str) -> bool:
    """The side effects of a job's end: documents or error.json to the outbox (drop-folder jobs),
    then the webhook. Runs as the ``announce`` step on a cpu worker (queued by the ending itself,
    ``JobStore.transition``). True when both are done (or not wanted): the step may then leave the
    outbox; False leaves it there, to be sent again (``announce_resend_s``)."""
    delivered = deliver_quietly(rt, job_id)
    notified = notify(rt, job_id)
    return delivered and notified


def build_runtime(settings: Settings, *, migrate: bool = True) -> Runtime:
    from workers.audio import FfmpegAudio
    from workers.engines import build_engine

    db = Database(settings.resolved_database_url())
    if migrate:
        db.migrate()
    storage = open_storage(settings.resolved_storage_url(), settings.s3_endpoint_url)
    return Runtime(
        db=db,
        storage=storage,
        audio=FfmpegAudio(),
        settings=settings,
        engine_factory=lambda: build_engine(settings),
        announces=names_job,
        on_job_end=[wake_after_end],
        on_window_done=[notify_window],
        on_job_deleted=[remove_delivered],
    )


def process_runtime() -> Runtime:
    """This worker process's Runtime, built on first use (after the prefork fork, once per child)."""
    global _process_runtime
    with _lock:
        if _process_runtime is None:
            _process_runtime = build_runtime(get_settings())
        return _process_runtime


def built_runtime() -> Runtime | None:
    """The process's Runtime if a task has built it (a prefork parent never does)."""
    return _process_runtime
