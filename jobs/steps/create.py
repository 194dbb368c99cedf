"""Creating a job: options checked, one row written, and with ``enqueue`` its split in the outbox in
the same transaction (what runs next is ``next``'s answer)."""

from __future__ import annotations

import logging
from pathlib import Path

from jobs.admission import admit
from jobs.collections import with_collection
from jobs.models import Job, Priority
from jobs.options import JobOptions
from jobs.runtime import Runtime

log = logging.getLogger(__name__)


def create_job(
    rt: Runtime,
    source: str,
    options: JobOptions,
    *,
    source_name: str | None = None,
    source_key: str | None = None,
    tenant: str | None = None,
    fingerprint: str | None = None,
    duration_s: float | None = None,
    enqueue: bool = False,
) -> Job:
    """``duration_s`` (from ffprobe) is checked against the limits before the row is written.

    ``enqueue``: the job's split goes into the outbox in the row's own transaction (the workers'
    path; ``workers.meter`` relays it). A local run, or a job whose source is still being stored,
    leaves it out."""
    opts = with_collection(rt.db, tenant, options).validated(rt.settings)
    admit(rt, duration_s, tenant)
    job = Job(
        source=source,
        source_key=source_key,
        source_name=source_name or Path(source).name,
        tenant=tenant,
        fingerprint=fingerprint,
        duration_s=duration_s,
        instructions=opts.instructions,
        preset=opts.preset or "conference-talk",
        language=opts.language,
        window_minutes=opts.window_minutes or rt.settings.window_minutes,
        webhook_url=opts.webhook_url,
        webhook_events=opts.webhook_events if isinstance(opts.webhook_events, str) else None,
        vocabulary=opts.vocabulary,
        priority=Priority(opts.priority or Priority.interactive),
        collection_id=opts.collection,
        title=opts.title,
    )
    rt.store.add(job, enqueue=enqueue)
    log.info("job %s: created for %s", job.id, job.source_name)
    return job
