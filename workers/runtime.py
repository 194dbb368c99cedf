"""Builds the pipeline's Runtime for this process from settings: database, storage, ffmpeg, engine."""

from __future__ import annotations

from jobs.db import Database
from jobs.pipeline import Runtime
from jobs.settings import Settings
from jobs.storage import open_storage


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
    )
