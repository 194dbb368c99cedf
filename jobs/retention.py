"""Deleting what a job left: ``DELETE /v1/jobs/{id}``, a collection's deletion, and the per-tenant
retention the sweep applies (``sweep_expired``).

A deleted job leaves nothing of its own: its search index rows (``jobs.search``), everything under
``jobs/<id>/`` in storage (documents, window audio and results, segments, the overall summary, a
copy of a local file made by ``submit``), the upload it was made from (``uploads/…``), its
Idempotency-Key, the copies a drop-folder job's end wrote into the drop folder's outbox (the
Runtime's ``on_job_deleted`` hooks: ``workers.outbox.remove_delivered``), then its rows
(``JobStore.delete``). The user's own recording (an ``s3://`` source, a drop-folder object in the
inbox, a local path) is never touched, and the drop folder's ledger keeps its row,
so the recording is not taken again. A job that has not ended is refused (cancel it first): no step
may write after its files are gone. A deleted job of a collection leaves its proceedings at once
(rebuilt without a model call; the collection's summary catches up when another job succeeds).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from jobs import collections, idempotency, proceedings, search, tenants
from jobs.errors import Conflict
from jobs.models import Job, utcnow
from jobs.runtime import Runtime
from jobs.states import ENDED

log = logging.getLogger(__name__)

# Keys a job's upload is stored under (api/staging.upload_key): the job's own copy of the recording.
UPLOADS_PREFIX = "uploads/"


def delete_job(rt: Runtime, job_id: str, tenant: str | None = None) -> None:
    """Delete one of the tenant's jobs that has ended; Conflict while it runs, NotFound for another's."""
    job = rt.store.get(job_id, tenant)
    if job.status not in ENDED:
        raise Conflict(f"job {job.id} is {job.status}; cancel it first, then delete it")
    _remove(rt, job)


def _remove(rt: Runtime, job: Job, *, collection_going: bool = False) -> None:
    search.unindex_job(rt.db, job.id)
    for key in list(rt.storage.list(f"jobs/{job.id}/")):
        rt.storage.delete(key)
    if job.source_key and job.source_key.startswith(UPLOADS_PREFIX):
        rt.storage.delete(job.source_key)
    # After its documents are gone (an announce step running now finds nothing to copy), before
    # its row (a failure here leaves the job to delete again).
    for hook in rt.on_job_deleted:
        hook(rt, job.id)
    idempotency.forget_job(rt.db, job.id)
    rt.store.delete(job.id)
    log.info("job %s: deleted", job.id)
    if job.collection_id and not collection_going:
        proceedings.rebuild_without_model(rt, job.collection_id)  # its talk leaves the proceedings


def delete_collection(rt: Runtime, tenant: str | None, ref: str) -> int:
    """Delete a collection, every job in it and its proceedings; Conflict (nothing deleted) while
    one of its jobs runs. Returns how many jobs were deleted."""
    row = collections.get(rt.db, tenant, ref)
    jobs = rt.store.in_collection(row.id)
    running = [j.id for j in jobs if j.status not in ENDED]
    if running:
        raise Conflict(
            f"collection {row.name!r} has {len(running)} job(s) still running ({', '.join(running[:5])}); "
            "cancel them first"
        )
    for job in jobs:
        _remove(rt, job, collection_going=True)
    for key in list(rt.storage.list(collections.proceedings_prefix(row.id))):
        rt.storage.delete(key)
    collections.remove(rt.db, row.id)
    log.info("collection %s (%s): deleted with %d job(s)", row.id, row.name, len(jobs))
    return len(jobs)


def sweep_expired(rt: Runtime, batch: int = 100) -> list[str]:
    """Delete the finished jobs of tenants with a retention setting that ended more than that many
    days ago (a sweep step); at most ``batch`` per tenant per sweep. Returns the ids deleted."""
    deleted: list[str] = []
    now = utcnow()
    for tenant, days in tenants.retention_days(rt.db).items():
        for job_id in rt.store.ended_before(tenant, now - timedelta(days=days), limit=batch):
            job = rt.store.find(job_id)
            if job is None or job.status not in ENDED:
                continue
            try:
                _remove(rt, job)
            except Exception:
                log.exception("job %s: retention could not delete it (the next sweep tries again)", job_id)
                continue
            deleted.append(job_id)
    if deleted:
        log.info("retention: deleted %d finished job(s)", len(deleted))
    return deleted
